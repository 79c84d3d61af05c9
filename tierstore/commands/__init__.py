"""The `tierstore` subcommands, one module each; tierstore.cli assembles them."""
