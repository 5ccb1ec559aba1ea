/* kvm_loop.c - the baseline the benchmarks hold vmm against: a minimal C KVM run loop.
 *
 * Built by bench/run.py with `gcc -O2` when the benchmarks run. It boots the same raw guests
 * vmm boots, the same way (real mode, loaded at 0x1000 with CS = DS = SS = 0, or a 64 KiB
 * reset image at 0xF0000 started at F000:FFF0), in the same amount of RAM, and serves the same
 * port-I/O contract in its simplest form:
 *
 *   OUT to 0x42, 0xe9, 0xf1, 0x3f8   the byte goes to stdout (stdio-buffered)
 *   OUT to 0xf4                      ends the run with status (v << 1) | 1, like vmm
 *   OUT/IN 0x3ff                     COM1's scratch register: stores the byte / reads it back
 *   any other OUT                    ignored;  IN: 0 (0x60 from COM1's LSR, 0x3fd)
 *   HLT                              ends the run with status 0
 *
 * That is the "naive" loop: one exit per OUT, no coalescing. `--coalesce` registers the four
 * output ports as coalesced PIO and drains the ring at every exit, to show what the kernel
 * alone can do. `--stats` prints one line of JSON to stderr: exits, output bytes and the time
 * spent in the run loop (after setup, before teardown).
 *
 * Usage: kvm_loop GUEST [--reset] [--mem BYTES] [--coalesce] [--stats]
 * Source: Documentation/virt/kvm/api.rst; no other dependency than libc and <linux/kvm.h>.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define LOAD_ADDR 0x1000
#define RESET_LOAD 0xF0000
#define TSS_ADDR 0xFFFBD000u

static void die(const char *what)
{
    fprintf(stderr, "kvm_loop: %s: %s\n", what, strerror(errno));
    exit(99);
}

static int is_output_port(unsigned port)
{
    return port == 0x42 || port == 0xe9 || port == 0xf1 || port == 0x3f8;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static unsigned long out_bytes;
static uint8_t scratch;          /* COM1's scratch register (0x3ff), the exit benchmark's port */

static void drain(struct kvm_coalesced_mmio_ring *ring, unsigned max)
{
    while (ring->first != ring->last) {
        struct kvm_coalesced_mmio *e = &ring->coalesced_mmio[ring->first];
        fwrite(e->data, 1, e->len, stdout);
        out_bytes += e->len;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        ring->first = (ring->first + 1) % max;
    }
}

int main(int argc, char **argv)
{
    const char *guest = NULL;
    int reset = 0, coalesce = 0, stats = 0;
    size_t mem = 16u << 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reset")) reset = 1;
        else if (!strcmp(argv[i], "--coalesce")) coalesce = 1;
        else if (!strcmp(argv[i], "--stats")) stats = 1;
        else if (!strcmp(argv[i], "--mem") && i + 1 < argc) mem = strtoul(argv[++i], NULL, 0);
        else guest = argv[i];
    }
    if (!guest) {
        fprintf(stderr, "usage: kvm_loop GUEST [--reset] [--mem BYTES] [--coalesce] [--stats]\n");
        return 2;
    }
    static char outbuf[1 << 16];
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    if (ioctl(vm, KVM_SET_TSS_ADDR, TSS_ADDR) < 0) die("KVM_SET_TSS_ADDR");
    uint8_t *ram = mmap(NULL, mem, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ram == MAP_FAILED) die("mmap RAM");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = mem, .userspace_addr = (uintptr_t)ram};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

    FILE *f = fopen(guest, "rb");
    if (!f) die(guest);
    size_t load = reset ? RESET_LOAD : LOAD_ADDR;
    size_t n = fread(ram + load, 1, mem - load, f);
    fclose(f);
    if (n == 0) die("empty guest");

    unsigned ring_max = 0;
    if (coalesce) {
        if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_COALESCED_PIO) <= 0) die("KVM_CAP_COALESCED_PIO");
        unsigned ports[] = {0x42, 0xe9, 0xf1, 0x3f8};
        for (unsigned i = 0; i < 4; i++) {
            struct kvm_coalesced_mmio_zone zone = {.addr = ports[i], .size = 1, .pio = 1};
            if (ioctl(vm, KVM_REGISTER_COALESCED_MMIO, &zone) < 0) die("KVM_REGISTER_COALESCED_MMIO");
        }
        ring_max = (getpagesize() - sizeof(struct kvm_coalesced_mmio_ring))
                   / sizeof(struct kvm_coalesced_mmio);
    }

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap vcpu");
    struct kvm_coalesced_mmio_ring *ring =
        (void *)((char *)run + KVM_COALESCED_MMIO_PAGE_OFFSET * getpagesize());

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss};
    for (unsigned i = 0; i < 6; i++) {
        segs[i]->selector = 0;
        segs[i]->base = 0;
    }
    if (reset) {
        sregs.cs.selector = 0xF000;
        sregs.cs.base = 0xF0000;
    }
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    struct kvm_regs regs = {.rip = reset ? 0xFFF0 : LOAD_ADDR, .rsp = 0xFFF0, .rflags = 2};
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

    unsigned long exits = 0;
    int status = -1;
    uint64_t start = now_ns();
    while (status < 0) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR) continue;
            die("KVM_RUN");
        }
        exits++;
        if (coalesce) drain(ring, ring_max);
        switch (run->exit_reason) {
        case KVM_EXIT_HLT:
            status = 0;
            break;
        case KVM_EXIT_IO: {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            unsigned len = run->io.size * run->io.count;
            if (run->io.direction == KVM_EXIT_IO_OUT) {
                if (is_output_port(run->io.port)) {
                    for (unsigned i = 0; i < len; i += run->io.size) putchar(data[i]);
                    out_bytes += run->io.count;
                } else if (run->io.port == 0x3ff) {
                    scratch = data[len - 1];
                } else if (run->io.port == 0xf4) {
                    status = ((data[0] << 1) | 1) & 0xff;
                }
            } else {
                memset(data, run->io.port == 0x3fd ? 0x60 : run->io.port == 0x3ff ? scratch : 0,
                       len);
            }
            break;
        }
        default:
            fprintf(stderr, "kvm_loop: unexpected exit reason %u\n", run->exit_reason);
            status = 98;
        }
    }
    uint64_t loop_ns = now_ns() - start;
    if (coalesce) drain(ring, ring_max);
    fflush(stdout);
    if (stats)
        fprintf(stderr, "{\"exits\": %lu, \"out_bytes\": %lu, \"loop_ns\": %llu}\n",
                exits, out_bytes, (unsigned long long)loop_ns);
    munmap(run, run_size);
    close(vcpu);
    munmap(ram, mem);
    close(vm);
    close(kvm);
    return status;
}
