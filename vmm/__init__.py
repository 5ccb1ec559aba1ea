"""vmm: a deterministic record-and-replay micro VMM for small x86 guest kernels, on Linux KVM."""

__version__ = "0.1.0"
