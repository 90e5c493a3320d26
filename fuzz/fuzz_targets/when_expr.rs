#![no_main]
// See kla::fuzzing::when_expr for the input and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kla::fuzzing::when_expr(data);
});
