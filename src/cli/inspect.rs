//! `irsa-secrets token` and `irsa-secrets doctor`: look at the identity without serving it.

use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;

use super::assemble::{asked, credential_source, secret_sources};
use super::sts::StsArgs;
use super::{ChoiceArgs, IdentityArgs, RegionArgs, SecretArgs, WebTokenArgs};
use crate::plan::{Asked, NO_IDENTITY_HINT};
use crate::source::identity::{Identity, NoIdentity};
use crate::source::irsa::{check_role_arn, check_token_file, read_token, token_hint};
use crate::source::jwt::{self, Checked};
use crate::source::static_secret::Origin;
use crate::source::IdentityIds;
use crate::source::Source;

/// Flags of `token`.
#[derive(Debug, Args)]
#[command(
    mut_arg("mock", |a| a.help("Show a freshly minted mock token instead of IRSA's").long_help(None::<&str>)),
    mut_arg("token_file", |a| a.help("The projected service-account token to show")),
    mut_arg("expiry_margin", |a| a.help("Flag the token as expiring soon with less than this left (e.g. 5m, 1h)")),
)]
pub struct TokenArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub token: WebTokenArgs,
}

/// Flags of `doctor`: what the helper would serve, checked without serving it.
#[derive(Debug, Args)]
#[command(
    mut_arg("mock", |a| a.help("Check the mock identity instead of IRSA (always passes)").long_help(None::<&str>)),
    mut_arg("secrets", |a| a
        .help("Also check a secret declared as for `serve` (id=ID,src=FILE, id=ID,env=VAR or id=ID,type=aws-sm|aws-ssm,name=NAME): the file exists, the variable is set, or the AWS value can be read (its size and SHA-256 are shown)")
        .long_help(None::<&str>)),
    mut_arg("token_file", |a| a.help("The projected service-account token to check")),
    mut_arg("expiry_margin", |a| a.help("A token with less lifetime left is a problem (e.g. 5m, 1h)")),
    mut_arg("region", |a| a.help("AWS region, for the --sts exchange's regional endpoint")),
    mut_arg("serve_identity", |a| a.hide(true)),
    mut_arg("assume_role", |a| a.hide(true)),
    mut_arg("external_id", |a| a.hide(true)),
    mut_arg("sts", |a| a
        .help("Also exchange the token with STS once, as `serve --sts` would, and show the assumed role and expiry (never the keys)")
        .long_help(None::<&str>)),
    mut_arg("choice", |a| a.help("Which identity to check (as for `serve`)")),
)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub identity: IdentityArgs,

    #[command(flatten)]
    pub region: RegionArgs,

    #[command(flatten)]
    pub secrets: SecretArgs,

    #[command(flatten)]
    pub sts: StsArgs,

    #[command(flatten)]
    pub choice: ChoiceArgs,
}

impl DoctorArgs {
    /// What these flags ask for, as the plan reads it.
    fn asked(&self) -> Asked {
        asked(
            &self.identity,
            self.choice.choice,
            &self.sts,
            &self.region,
            &self.secrets,
        )
    }
}

/// Checks a credential identity or GitHub's token by asking for it once: credentials show
/// their principal and expiry, a token its lifetime and subject, never a value.
async fn platform_check(args: &DoctorArgs, identity: Identity, r: &mut Report) {
    let region = args.region.region.clone();
    let platform = match identity.platform() {
        Some(platform) => platform,
        None => {
            let checked = match args
                .identity
                .web_identity(true, IdentityIds::default(), region)
            {
                Ok(github) => github.checked_token().await.map(|(_, c)| c),
                Err(e) => return r.fail(&format!("{e:#}"), "run this as a step of the job"),
            };
            return match checked {
                Ok(c) => r.ok(&format!(
                    "GitHub issued a token valid for {} (audience {}, subject {})",
                    jwt::human(c.remaining),
                    args.identity.token.audience,
                    c.claims.sub.as_deref().unwrap_or("none")
                )),
                Err(e) => fail_with_hint(r, &e.message),
            };
        }
    };
    let served = region.map(|r| (String::new(), r));
    let credentials = match args
        .asked()
        .narrowing()
        .map_err(anyhow::Error::from)
        .and_then(|narrowing| {
            credential_source(
                platform,
                narrowing.as_ref(),
                &args.sts,
                args.identity.token.expiry_margin,
                served,
                None,
            )
        }) {
        Ok(c) => c,
        Err(e) => {
            return r.fail(
                &format!("{e:#}"),
                "export AWS_REGION=REGION or pass --region",
            )
        }
    };
    match credentials.current().await {
        Ok(issued) => r.ok(&format!(
            "{} issued credentials{} expiring at {} (in {})",
            credentials.name(),
            Some(&issued.principal)
                .filter(|p| !p.is_empty())
                .map(|p| format!(" for {p}"))
                .unwrap_or_default(),
            issued.expiration_rfc3339(),
            jwt::human(issued.valid_for(SystemTime::now()))
        )),
        Err(e) => fail_with_hint(r, &e.message),
    }
}

/// A source's message, `WHAT; FIX`, as a failed check.
fn fail_with_hint(r: &mut Report, message: &str) {
    match message.rsplit_once("; ") {
        Some((what, fix)) => r.fail(what, fix),
        None => r.fail(message, "see the message above"),
    }
}

/// Performs one exchange and reports the assumed role and expiry, never the keys. Skipped when
/// the identity itself has a problem, which the checks above already reported.
async fn sts_check(args: &DoctorArgs, r: &mut Report) {
    if r.problems > 0 {
        println!("skip  the STS exchange (fix the identity first)");
        return;
    }
    let no_region = args.region.region.is_none();
    let asked = args.asked();
    let identity = asked.choose().map_or(Identity::Irsa, |c| c.identity);
    let sts = match asked
        .exchange(identity)
        .map_err(anyhow::Error::from)
        .and_then(|region| {
            args.sts
                .source(&args.identity, false, &IdentityIds::default(), &region)
        }) {
        Ok(sts) => sts,
        Err(e) => {
            let fix = if args.identity.token.mock {
                "drop --mock: STS accepts only a real IRSA token"
            } else if no_region {
                "export AWS_REGION=REGION (e.g. us-east-1) or pass --region REGION"
            } else {
                "correct the --session-policy file (JSON, at most 2048 characters) or the \
                 --policy-arn values (at most 10 managed policy ARNs)"
            };
            return r.fail(&format!("{e:#}"), fix);
        }
    };
    match sts.current().await {
        Ok(issued) => r.ok(&format!(
            "STS issued credentials for {} expiring at {} (in {})",
            issued.principal,
            issued.expiration_rfc3339(),
            jwt::human(issued.valid_for(SystemTime::now()))
        )),
        Err(e) => r.fail(
            &format!("the STS exchange failed: {e}"),
            "run `irsa-secrets token` for the claims STS checks: the role's trust policy must \
             name this token's issuer (OIDC provider), audience and subject",
        ),
    }
}

pub(super) fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let want = args.token.expectations();
    let (source, checked) = if args.token.mock {
        let mock = args.token.mock_source(IdentityIds::default(), None);
        (
            "mock",
            jwt::check(mock.token().expose(), &want, SystemTime::now())?,
        )
    } else {
        let Some(file) = &args.token.token_file else {
            anyhow::bail!(
                "no token: AWS_WEB_IDENTITY_TOKEN_FILE (or --token-file) is not set. \
                 {NO_IDENTITY_HINT}"
            );
        };
        let (_, checked) = check_token_file(file, &want).map_err(|e| anyhow::anyhow!(e.message))?;
        ("irsa", checked)
    };
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

/// Reads each `aws-sm` and `aws-ssm` secret once with the helper's own credentials, as `serve`
/// would, and shows its size and SHA-256 (as `probe` does), never the value.
async fn aws_secrets_check(args: &DoctorArgs, r: &mut Report) {
    let asked = args.asked();
    let (_, declared) = asked.declared();
    if declared.is_empty() {
        return;
    }
    let fix = "run with a real identity (IRSA, Pod Identity, --identity imds, ...): the helper \
               fetches aws-sm and aws-ssm secrets with its own credentials";
    let aws =
        match args
            .identity
            .own_aws(asked.own(), args.region.region.as_deref(), &args.sts)
        {
            Ok(Some(aws)) => aws,
            Ok(None) => return r.fail(
                "aws-sm and aws-ssm secrets are declared, and the identity (mock, or none) has no \
                 AWS credentials",
                fix,
            ),
            Err(e) => return r.fail(&format!("{e:#}"), fix),
        };
    let sources = match secret_sources(&[], &declared, Some(&aws)) {
        Ok(sources) => sources,
        Err(e) => return r.fail(&format!("{e:#}"), fix),
    };
    for source in sources {
        for id in source.ids() {
            let name = source.origin(&id).unwrap_or_default().to_string();
            match source.fetch(&id).await {
                Ok(Some(value)) => {
                    use sha2::Digest;
                    r.ok(&format!(
                        "secret {id}: {} {name} is readable: {} bytes, sha256 {}",
                        source.name(),
                        value.len(),
                        hex::encode(sha2::Sha256::digest(value.expose()))
                    ))
                }
                Ok(None) => {}
                Err(e) => r.fail(
                    &format!("secret {id}: {} {name}: {e}", source.name()),
                    "give the helper's role access to it, or correct the --secret declaration",
                ),
            }
        }
    }
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

/// The fix for a missing identity variable: on EKS the webhook sets it; on a laptop the mock does.
const LAPTOP_FIX: &str = "on a laptop, run `irsa-secrets mock write ~/.irsa/identity` and \
     `set -a; . ~/.irsa/identity/env; set +a`, or pass --mock";

pub(super) async fn doctor(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let id = &args.identity;
    let mut r = Report { problems: 0 };
    let choice = args.asked().choose();
    // IRSA's own checks below name the IRSA setting that is missing; any other identity asked
    // for and incomplete, or none at all, gets the fix of every identity the helper serves.
    let irsa_started = id.token.token_file.is_some() || id.role_arn.is_some();
    let missing = match &choice {
        Err(e @ NoIdentity::NoneFound) if !irsa_started => Some(e.to_string()),
        Err(e @ NoIdentity::Incomplete { identity, .. }) if *identity != Identity::Irsa => {
            Some(e.to_string())
        }
        _ => None,
    };
    // Credentials and GitHub's token are checked by asking for them once; IRSA's settings and
    // the mock below, one by one.
    let chosen = choice
        .ok()
        .filter(|c| c.identity.platform().is_some() || c.identity == Identity::GithubOidc);
    if let Some(c) = &chosen {
        r.ok(&format!("identity {} ({})", c.identity, c.because));
        platform_check(&args, c.identity, &mut r).await;
    } else if let Some(missing) = missing {
        r.fail(&format!("no identity: {missing}"), NO_IDENTITY_HINT);
    } else if id.token.mock {
        r.ok("mock identity selected (--mock): builds get a fake token and role ARN");
    } else {
        match &id.role_arn {
            None => r.fail(
                "AWS_ROLE_ARN is not set",
                &format!(
                    "on EKS, annotate the runner's service account with \
                     eks.amazonaws.com/role-arn (or pass --role-arn ARN); {LAPTOP_FIX}"
                ),
            ),
            Some(arn) => match check_role_arn(arn) {
                Ok(()) => r.ok("AWS_ROLE_ARN is set and is an IAM role ARN"),
                Err(e) => r.fail(
                    &e.to_string(),
                    "set AWS_ROLE_ARN (or --role-arn) to the role the service account may \
                     assume: `kubectl get sa NAME -o yaml` shows its eks.amazonaws.com/role-arn",
                ),
            },
        }
        match &id.token.token_file {
            None => r.fail(
                "AWS_WEB_IDENTITY_TOKEN_FILE is not set",
                &format!(
                    "on EKS, run in a pod whose service account has the \
                     eks.amazonaws.com/role-arn annotation (or pass --token-file FILE); \
                     {LAPTOP_FIX}"
                ),
            ),
            Some(file) => match read_token(file) {
                Err(e) => r.fail(
                    &e.message,
                    "mount the projected service-account token and point \
                     AWS_WEB_IDENTITY_TOKEN_FILE at it (`ls -l FILE` shows whether it exists \
                     and who may read it)",
                ),
                Ok(token) => {
                    r.ok(&format!("token file {} is readable", file.display()));
                    let want = id.token.expectations();
                    match jwt::check(token.expose(), &want, SystemTime::now()) {
                        Err(e) => r.fail(&format!("the token {e}"), token_hint(&e)),
                        Ok(c) if c.expiring_soon => r.fail(
                            &format!(
                                "the token expires in {}, under the {} margin",
                                jwt::human(c.remaining),
                                jwt::human(id.token.expiry_margin)
                            ),
                            "kubelet should rotate it at 80% of its lifetime: check the \
                             projected volume and kubelet (`kubectl describe pod`)",
                        ),
                        Ok(c) => r.ok(&format!(
                            "the token is valid for {} (audience {}, subject {})",
                            jwt::human(c.remaining),
                            id.token.audience,
                            c.claims.sub.as_deref().unwrap_or("none")
                        )),
                    }
                }
            },
        }
    }
    if args.sts.sts && chosen.is_none() {
        sts_check(&args, &mut r).await;
    }
    for spec in &args.secrets.secrets {
        match &spec.origin {
            Origin::File(path) => match std::fs::metadata(path) {
                Ok(_) => r.ok(&format!(
                    "secret {}: file {} exists",
                    spec.id,
                    path.display()
                )),
                Err(e) => r.fail(
                    &format!("secret {}: {}: {e}", spec.id, path.display()),
                    "create the file, or correct src= in --secret",
                ),
            },
            Origin::Env(var) => match std::env::var_os(var) {
                Some(_) => r.ok(&format!("secret {}: variable {var} is set", spec.id)),
                None => r.fail(
                    &format!("secret {}: variable {var} is not set", spec.id),
                    &format!(
                        "export {var} in the helper's environment, or correct env= in --secret"
                    ),
                ),
            },
            Origin::Aws(_) => {}
        }
    }
    aws_secrets_check(&args, &mut r).await;
    match r.problems {
        0 => {
            println!("all checks passed");
            Ok(ExitCode::SUCCESS)
        }
        1 => {
            println!("1 problem found");
            Ok(ExitCode::FAILURE)
        }
        n => {
            println!("{n} problems found");
            Ok(ExitCode::FAILURE)
        }
    }
}
