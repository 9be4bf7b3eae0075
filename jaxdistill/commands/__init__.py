"""The `jaxdistill` subcommands; each module defines its absl flags and a `main()`."""
