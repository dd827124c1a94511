"""What `dtkg demo` needs: the sample corpus (`sample`) and the local origin that serves it (`origin`)."""
