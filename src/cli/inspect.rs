//! `irsa-secrets token` and `irsa-secrets doctor`: look at the identity without serving it.

use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;

use super::{Identity, IdentityArgs};
use crate::jwt::{self, Checked};
use crate::sources::irsa::{check_role_arn, read_token};
use crate::sources::static_secret::Origin;

/// Flags of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// Flags of `doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub identity: IdentityArgs,
}

/// Performs one exchange and reports the assumed role and expiry, never the keys. Skipped when
/// the identity itself has a problem, which the checks above already reported.
async fn sts_check(id: &IdentityArgs, r: &mut Report) {
    if r.problems > 0 {
        println!("skip  the STS exchange (fix the identity first)");
        return;
    }
    let sts = match id.sts() {
        Ok(sts) => sts,
        Err(e) => return r.fail(&format!("{e:#}"), "fix the --sts flags"),
    };
    match sts.credentials().await {
        Ok(issued) => r.ok(&format!(
            "STS issued credentials for {} expiring at {} (in {})",
            issued.assumed_role_arn,
            issued.expiration_rfc3339(),
            jwt::human(issued.valid_for(SystemTime::now()))
        )),
        Err(e) => r.fail(
            &format!("the STS exchange failed: {e}"),
            "see the message; `irsa-secrets token` shows the claims STS sees",
        ),
    }
}

pub(super) fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let checked = match args.identity.identity()? {
        Identity::Irsa(irsa) => irsa.checked_token()?.1,
        Identity::Mock(mock) => {
            let want = args.identity.expectations();
            jwt::check(mock.token().expose(), &want, SystemTime::now())?
        }
    };
    let source = if args.identity.mock { "mock" } else { "irsa" };
    if args.json {
        let out = serde_json::json!({
            "source": source,
            "claims": checked.claims,
            "expires_at": jwt::rfc3339(checked.claims.exp),
            "remaining_seconds": checked.remaining.as_secs(),
            "expiring_soon": checked.expiring_soon,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_claims(source, &checked);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_claims(source: &str, c: &Checked) {
    let show = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            println!("{name:<10} {v}");
        }
    };
    show("source", Some(source.to_string()));
    show("issuer", c.claims.iss.clone());
    show("subject", c.claims.sub.clone());
    show("audience", Some(c.claims.aud.to_vec().join(", ")));
    show("issued", c.claims.iat.map(jwt::rfc3339));
    show("expires", Some(jwt::rfc3339(c.claims.exp)));
    let warn = if c.expiring_soon {
        " (under the expiry margin)"
    } else {
        ""
    };
    show(
        "remaining",
        Some(format!("{}{warn}", jwt::human(c.remaining))),
    );
}

/// One preflight verdict line.
struct Report {
    problems: usize,
}

impl Report {
    fn ok(&mut self, what: &str) {
        println!("ok    {what}");
    }

    fn fail(&mut self, what: &str, fix: &str) {
        self.problems += 1;
        println!("FAIL  {what}\n      fix: {fix}");
    }
}

pub(super) async fn doctor(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let id = &args.identity;
    let mut r = Report { problems: 0 };
    if id.mock {
        r.ok("mock identity selected (--mock): builds get a fake token and role ARN");
    } else {
        match &id.role_arn {
            None => r.fail(
                "AWS_ROLE_ARN is not set",
                "annotate the runner's service account with eks.amazonaws.com/role-arn, or pass --role-arn",
            ),
            Some(arn) => match check_role_arn(arn) {
                Ok(()) => r.ok("AWS_ROLE_ARN is set and is an IAM role ARN"),
                Err(e) => r.fail(&e, "set AWS_ROLE_ARN to the role the service account may assume"),
            },
        }
        match &id.token_file {
            None => r.fail(
                "AWS_WEB_IDENTITY_TOKEN_FILE is not set",
                "run in a pod whose service account has the eks.amazonaws.com/role-arn annotation, or pass --token-file",
            ),
            Some(file) => match read_token(file) {
                Err(e) => r.fail(&e.message, "mount the projected service-account token and point AWS_WEB_IDENTITY_TOKEN_FILE at it"),
                Ok(token) => {
                    r.ok(&format!("token file {} is readable", file.display()));
                    match jwt::check(token.expose(), &id.expectations(), SystemTime::now()) {
                        Err(e) => r.fail(&format!("the token {e}"), "see the message; the projected volume sets audience and lifetime"),
                        Ok(c) if c.expiring_soon => r.fail(
                            &format!("the token expires in {}, under the {} margin", jwt::human(c.remaining), jwt::human(id.expiry_margin)),
                            "kubelet should rotate it at 80% of its lifetime: check the projected volume and kubelet",
                        ),
                        Ok(c) => r.ok(&format!(
                            "the token is valid for {} (audience {}, subject {})",
                            jwt::human(c.remaining),
                            id.audience,
                            c.claims.sub.as_deref().unwrap_or("none")
                        )),
                    }
                }
            },
        }
    }
    if id.sts.sts {
        sts_check(id, &mut r).await;
    }
    for spec in &id.secrets {
        match &spec.origin {
            Origin::File(path) => match std::fs::metadata(path) {
                Ok(_) => r.ok(&format!(
                    "secret {}: file {} exists",
                    spec.id,
                    path.display()
                )),
                Err(e) => r.fail(
                    &format!("secret {}: {}: {e}", spec.id, path.display()),
                    "fix the src= path",
                ),
            },
            Origin::Env(var) => match std::env::var_os(var) {
                Some(_) => r.ok(&format!("secret {}: variable {var} is set", spec.id)),
                None => r.fail(
                    &format!("secret {}: variable {var} is not set", spec.id),
                    "export it in the helper's environment",
                ),
            },
        }
    }
    if r.problems == 0 {
        println!("all checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} problem(s) found", r.problems);
        Ok(ExitCode::FAILURE)
    }
}
