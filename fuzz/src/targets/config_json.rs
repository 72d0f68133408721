//! The config file: `VmConfig::from_json` then `validate`; a config that
//! parses must also survive a serialize/parse round trip unchanged.

use sie_config::VmConfig;

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(mut config) = VmConfig::from_json(&text) else {
        return;
    };
    let _ = config.validate();
    // Opaque JSON kept only to be refused later: serde_json's float
    // printing is not ours to test.
    config.mmds_config = None;
    config.cpu_config = None;
    let json = serde_json::to_string(&config).expect("a parsed config serializes");
    let again = VmConfig::from_json(&json).expect("a serialized config parses");
    assert_eq!(
        config, again,
        "config changed in a round trip through {json}"
    );
}
