"""The `rdtf` command line (`jobs.cli`) and the demo corpus."""
