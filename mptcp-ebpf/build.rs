//! Linker flags for the eBPF objects.

fn main() {
    // bpf-linker passes LLVM `--bpf-expand-memcpy-in-order` by default, which leaves every
    // `memset` and `memmove` of a fixed size (zeroed arrays, copied addresses) as a call to a
    // byte-at-a-time loop. The verifier walks that loop byte by byte at every call, for every
    // state that reaches it: 43 % of the instructions it processed for the state-change program
    // (28,600 of 67,192 on 6.18), the bulk of a tracer's start-up time in the test guests.
    // Without the flag LLVM writes them as a few plain stores. (The flag keeps copies' loads and
    // stores in order for JITs that recognise them as copies; it does not change what the
    // program does.)
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
