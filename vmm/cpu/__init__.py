"""CPU backends: the interface every backend implements (backend.py), KVM (kvm.py: the ioctl
layer; kvm_backend.py: the backend; coalesced.py: its batched-OUT ring), the emulator
(emu_backend.py), and the CPUID table the guest sees (cpuid.py)."""
