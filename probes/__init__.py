"""BPF C sources, shipped as package data (events.h is the kernel/userspace contract)."""
