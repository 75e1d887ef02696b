//! The token parser and claim checks: any bytes decode to claims or a reason, and every
//! message (times, durations) formats without panicking.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use irsa_secrets::source::jwt::{self, Expectations};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let want = Expectations {
        audience: "sts.amazonaws.com".into(),
        expiry_margin: Duration::from_secs(300),
    };
    // A clock anywhere from the epoch to past what RFC 3339 can write.
    let (clock, token) = match data.split_first() {
        Some((&c, rest)) => (u64::from(c) * (jwt::MAX_TIME / 200), rest),
        None => (0, data),
    };
    for now in [
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        UNIX_EPOCH + Duration::from_secs(clock),
    ] {
        match jwt::check(token, &want, now) {
            Ok(c) => {
                let _ = jwt::rfc3339(c.claims.exp);
                let _ = c.claims.iat.map(jwt::rfc3339);
                let _ = jwt::human(c.remaining);
                let _ = serde_json_like(&c);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});

/// What `token --json` prints from a checked token.
fn serde_json_like(c: &jwt::Checked) -> String {
    format!("{:?}", c.claims)
}
