#![no_main]
// See kla::fuzzing::config_yaml for the input and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kla::fuzzing::config_yaml(data);
});
