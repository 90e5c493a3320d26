#![no_main]
// See kla::fuzzing::request_body for the input and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kla::fuzzing::request_body(data);
});
