// Package tracer loads kdrop's BPF programs (bpf/kdrop.bpf.c), attaches each
// hook in the best mode the running kernel allows, reads events from the ring
// buffer and decodes them into Event values.
package tracer

// The BPF object is compiled once (CO-RE) and committed; `make generate`
// reruns this with the pinned clang (CLANG_PIN in the Makefile) against the
// committed bpf/vmlinux.h, and `make check-generate` proves the result is
// byte for byte what is committed. bpf2go maps the source directory out of
// the debug info (-fdebug-prefix-map, -fdebug-compilation-dir), so the
// checkout's path never reaches the object's BTF.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-16 -strip llvm-strip-16 -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target amd64 -type kdrop_event -type flow_key -type flow_state -type addr_key -type kdrop_event_type -type kdrop_queue -type kdrop_flags -type kdrop_mode -type kdrop_stat -type kdrop_gen kdrop ../bpf/kdrop.bpf.c -- -I../bpf
