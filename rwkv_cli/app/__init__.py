"""The application layer: the `rwkv-cpp` command (CLI, chat, benchmark, setup wizard, model
catalog, downloads, the home folder). It presents the library and adds no model logic."""
