//! `rserpool decode`: prints captured ASAP/ENRP bytes decoded, or the precise error.

use std::io::Read;

use rserpool::wire::{CauseInfo, Disposition, Error, Framer, MessageRepr, Protocol};
use serde_json::json;

use crate::describe;

/// Arguments of `rserpool decode`.
#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    /// The message(s) as hex (spaces, colons and a leading 0x are ignored), or `-` to read hex
    /// from standard input. Several messages back to back are decoded in turn, as on a TCP stream.
    pub hex: String,
    /// Decode as ENRP (registrar ↔ registrar) instead of ASAP.
    #[arg(long)]
    pub enrp: bool,
    /// Print JSON (one object per message) instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    let digits: Vec<u8> = t.bytes().filter(|b| !b" \t\r\n:".contains(b)).collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    digits
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let s = std::str::from_utf8(pair).map_err(|_| format!("not hex at digit {}", 2 * i))?;
            u8::from_str_radix(s, 16).map_err(|_| format!("not hex at digit {}: {s:?}", 2 * i))
        })
        .collect()
}

fn answer(e: &Error) -> String {
    let info = |i: &CauseInfo| match i {
        CauseInfo::None => String::new(),
        CauseInfo::Quote(r) => format!(" quoting bytes {}..{}", r.start, r.end),
        CauseInfo::EmptyParam(t) => format!(" carrying an empty {t}"),
    };
    match e.disposition() {
        Disposition::Close => "close the connection (the stream cannot be framed)".into(),
        Disposition::Discard => "discard silently".into(),
        Disposition::Report { cause, info: i } => {
            format!("report in an Error message, cause 0x{:x} {}{}", cause.0, cause.name().unwrap_or("?"), info(&i))
        }
        Disposition::Reject { cause, info: i } => {
            format!("reject, cause 0x{:x} {}{}", cause.0, cause.name().unwrap_or("?"), info(&i))
        }
    }
}

/// Runs the command; returns the process exit code.
pub fn run(args: DecodeArgs) -> i32 {
    let text = if args.hex == "-" {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            eprintln!("error: reading standard input: {e}");
            return 2;
        }
        s
    } else {
        args.hex.clone()
    };
    let bytes = match parse_hex(&text) {
        Ok(b) if !b.is_empty() => b,
        Ok(_) => {
            eprintln!("error: no bytes given");
            return 2;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let protocol = if args.enrp { Protocol::Enrp } else { Protocol::Asap };
    let framer = Framer::new(protocol, u16::MAX as usize);
    let mut at = 0;
    let mut first = true;
    while at < bytes.len() {
        let rest = &bytes[at..];
        // A stream of several messages is cut by the framer; what cannot be framed is decoded
        // as one message so that the error names the fault.
        let one = match framer.frame(rest) {
            Ok(rserpool::wire::Frame::Complete(m)) => m,
            _ => rest,
        };
        let result = MessageRepr::parse(one, protocol);
        if !first && !args.json {
            println!();
        }
        first = false;
        match result {
            Ok(repr) => {
                let v = describe::to_json(&repr);
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    print!("{}", describe::to_text(&v));
                }
            }
            Err(e) => {
                if args.json {
                    let v = json!({ "error": e.to_string(), "offset": at + e.offset as usize, "answer": answer(&e) });
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                } else {
                    eprintln!("error: {e}");
                    if at > 0 {
                        eprintln!("  (message starting at byte {at} of the input)");
                    }
                    eprintln!("  answer: {}", answer(&e));
                }
                return 1;
            }
        }
        at += one.len();
    }
    0
}
