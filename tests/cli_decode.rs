//! `rserpool decode` as a black box: every valid vector decodes (exit 0, JSON naming the right
//! message type), every bad vector is refused with exit status 1 and a precise error.

use std::path::PathBuf;
use std::process::Command;

fn vectors(sub: &str) -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(sub);
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "hex"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap().trim().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The hex of valid vector `name`.
fn valid(name: &str) -> String {
    vectors("").into_iter().find(|(n, _)| n == name).unwrap().1
}

fn decode(name: &str, hex: &str, json: bool) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rserpool"));
    cmd.arg("decode");
    if name.starts_with("enrp-") {
        cmd.arg("--enrp");
    }
    if json {
        cmd.arg("--json");
    }
    cmd.arg(hex).output().unwrap()
}

#[test]
fn valid_vectors_decode_to_json_with_their_type() {
    for (name, hex) in vectors("") {
        let out = decode(&name, &hex, true);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let code = u8::from_str_radix(&hex[..2], 16).unwrap();
        assert_eq!(v["type"], format!("0x{code:02x}"), "{name}");
        assert!(v["type_name"].is_string(), "{name}");
        assert!(v["params"].is_array(), "{name}");
        // Text output works too.
        let out = decode(&name, &hex, false);
        assert!(out.status.success() && out.stdout.starts_with(b"protocol: "), "{name}");
    }
}

#[test]
fn bad_vectors_exit_1_with_the_error() {
    for (name, hex) in vectors("bad") {
        let out = decode(&name, &hex, false);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: ") && err.contains(" at byte ") && err.contains("answer: "), "{name}: {err}");
    }
    // The JSON form of an error names the offset of the fault.
    let hex = vectors("bad").into_iter().find(|(n, _)| n == "asap-bad-ipv4-length-7").unwrap().1;
    let out = decode("asap-bad-ipv4-length-7", &hex, true);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["offset"], 36);
    assert!(v["answer"].as_str().unwrap().contains("cause 0x0"));
}

#[test]
fn messages_back_to_back_and_stdin() {
    let hr = valid("asap-handle-resolution");
    let two = format!("{hr}{hr}");
    let out = decode("x", &two, true);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("\"type_name\": \"Handle Resolution\"").count(), 2);

    let mut child = Command::new(env!("CARGO_BIN_EXE_rserpool"))
        .args(["decode", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("0x{hr}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("type_name: Handle Resolution"));

    // Not hex at all: usage error, exit 2.
    assert_eq!(decode("x", "zz", false).status.code(), Some(2));
}

#[test]
fn left_out_optional_parameters_are_explained() {
    let note = |name: &str| {
        let out = decode(name, &valid(name), true);
        assert!(out.status.success(), "{name}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["note"].as_str().map(str::to_string)
    };
    assert!(note("asap-handle-resolution-response-no-policy").is_some_and(|n| n.contains("Round Robin")));
    assert!(note("asap-endpoint-keep-alive-no-pe-id").is_some_and(|n| n.contains("every PE")));
    for name in [
        "asap-handle-resolution-response-16pe",
        "asap-handle-resolution-response-unknown-pool",
        "asap-endpoint-keep-alive",
    ] {
        assert_eq!(note(name), None, "{name}");
    }
}

#[test]
fn a_second_pool_element_is_refused_quoting_it() {
    // asap-registration (84 bytes) with its Pool Element (bytes 12..84) once more: 156 bytes.
    let reg = valid("asap-registration");
    let two = format!("{}009c{}{}", &reg[..4], &reg[8..], &reg[24..]);
    let out = decode("asap-registration", &two, false);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Pool Element (0x000a) at byte 84"), "{err}");
    assert!(err.contains("answer: reject, cause 0x3 Invalid Values quoting bytes 84..156"), "{err}");
}
