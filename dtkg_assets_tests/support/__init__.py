"""Test support: servers and fakes the tests (and the benchmarks) run against; not part of the product.

- `origin`: the fault-injecting HTTP origin (the demo's server, `dtkg_assets.demo.origin`, plus the
  test-only fault modes) and its command line;
- `nginx`: a real nginx over a directory (RFC-behaviour tests, benchmarks);
- `pgcluster`: a throwaway PostgreSQL cluster on loopback (scale-out tests, benchmarks);
- `fake_openalex`: an OpenAlex API fake;
- `landing_corpus`: landing pages, bot walls and records for the landing-page tests.
"""
