#![no_main]
// See kla::fuzzing::mcp for the input and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kla::fuzzing::mcp(data);
});
