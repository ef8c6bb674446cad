#![no_main]
use libfuzzer_sys::fuzz_target;
fuzz_target!(|data: &[u8]| mailflow::fuzz_targets::auth_results(data));
