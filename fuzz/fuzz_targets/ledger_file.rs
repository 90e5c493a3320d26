#![no_main]
// See kla::fuzzing::ledger_file for the input and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kla::fuzzing::ledger_file(data);
});
