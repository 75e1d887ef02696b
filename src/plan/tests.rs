//! The plan over the matrix of identity × `--sts` × `--assume-role` × AWS secrets × region,
//! and listeners × registry aliases × listener policy. Each row says what builds get and what
//! the helper's own calls use, written out, or which rule refuses the flags.

use super::*;
use crate::source::identity::Identity::*;

/// The settings the named identity needs, and nothing else.
fn present(identity: Identity) -> Present {
    let none = Present::default();
    match identity {
        Irsa => Present {
            token_file: true,
            role_arn: true,
            ..none
        },
        PodIdentity => Present {
            full_uri: true,
            container_token_file: true,
            ..none
        },
        Container => Present {
            relative_uri: true,
            ..none
        },
        Imds | Mock => none,
        GithubOidc => Present {
            github: true,
            role_arn: true,
            ..none
        },
    }
}

/// Every setting an identity can come from.
const EVERYTHING: Present = Present {
    token_file: true,
    role_arn: true,
    full_uri: true,
    relative_uri: true,
    container_token_file: true,
    github: true,
};

/// The identity column: how it is asked for, and with which settings present.
fn case(name: &str) -> Asked {
    let named = |identity| Asked {
        choice: Choice::Named(identity),
        present: present(identity),
        region: Some("eu-west-1".into()),
        ..Asked::default()
    };
    match name {
        "irsa" => named(Irsa),
        "pod-identity" => named(PodIdentity),
        "container" => named(Container),
        "imds" => named(Imds),
        "github-oidc" => named(GithubOidc),
        "mock" => Asked {
            mock: true,
            present: EVERYTHING,
            region: Some("eu-west-1".into()),
            ..Asked::default()
        },
        // `auto` with the Pod Identity agent and GitHub's variables, no IRSA: Pod Identity.
        "auto" => Asked {
            present: Present {
                token_file: false,
                ..EVERYTHING
            },
            region: Some("eu-west-1".into()),
            ..Asked::default()
        },
        // A config listener's own token file and role, with every variable in the environment.
        "own" => Asked {
            choice: Choice::Own,
            present: EVERYTHING,
            region: Some("eu-west-1".into()),
            ..Asked::default()
        },
        _ => unreachable!("{name}"),
    }
}

/// The outcome in a few words: what builds get, then the helper's own identity, or the error.
fn outcome(asked: &Asked) -> String {
    let serving = match asked.serving() {
        Ok(serving) => serving,
        Err(e) => return format!("error: {}", error_name(&e)),
    };
    let builds = match serving.builds {
        None => "secrets only".to_string(),
        Some(Builds::Token { github: false }) => "token".into(),
        Some(Builds::Token { github: true }) => "github token".into(),
        Some(Builds::Sts {
            github,
            serve_identity,
            ..
        }) => format!(
            "sts{}{}",
            if github { " of github" } else { "" },
            if serve_identity { " and token" } else { "" }
        ),
        Some(Builds::Mock) => "mock".into(),
        Some(Builds::Credentials {
            platform,
            assume_role,
        }) => format!(
            "{}{}",
            platform.name(),
            if assume_role.is_some() {
                " narrowed"
            } else {
                ""
            }
        ),
    };
    let own = match serving.own {
        None => "none".to_string(),
        Some(Own::Credentials(platform)) => platform.name().to_string(),
        Some(Own::WebIdentity(Irsa)) => "web".into(),
        Some(Own::WebIdentity(identity)) => format!("{identity} web").replace("-oidc", ""),
    };
    format!("{builds}; own {own}")
}

fn error_name(e: &ServeError) -> &'static str {
    match e {
        ServeError::NoIdentity(NoIdentity::NoneFound) => "none found",
        ServeError::NoIdentity(NoIdentity::Incomplete { .. }) => "incomplete",
        ServeError::AssumeRoleOnWebIdentity(_) => "assume-role on a web identity",
        ServeError::StsOnCredentials(_) => "sts on credentials",
        ServeError::StsOnMock => "sts on mock",
        ServeError::StsNeedsRegion => "sts needs a region",
        ServeError::AssumeRoleNeedsRegion => "assume-role needs a region",
        ServeError::AwsSecretWithoutAws { .. } => "aws secret without aws",
    }
}

const ROLE: &str = "arn:aws:iam::111122223333:role/narrow";

fn secret(spec: &str) -> SecretSpec {
    spec.parse().unwrap()
}

/// identity × `--sts` × `--assume-role`, each with and without an `aws-sm` secret: the secret
/// changes nothing where the helper has AWS credentials of its own, and is refused where it
/// has none.
#[test]
fn identity_sts_assume_role_and_aws_secrets() {
    const ASSUME_WEB: &str = "error: assume-role on a web identity";
    const STS_CREDS: &str = "error: sts on credentials";
    #[rustfmt::skip]
    let rows: &[(&str, bool, bool, &str)] = &[
        // identity      --sts  --assume-role  builds; own
        ("irsa",         false, false, "token; own web"),
        ("irsa",         true,  false, "sts; own web"),
        ("irsa",         false, true,  ASSUME_WEB),
        ("irsa",         true,  true,  ASSUME_WEB),
        ("github-oidc",  false, false, "github token; own github web"),
        ("github-oidc",  true,  false, "sts of github; own github web"),
        ("github-oidc",  false, true,  ASSUME_WEB),
        ("github-oidc",  true,  true,  ASSUME_WEB),
        ("pod-identity", false, false, "pod-identity; own pod-identity"),
        ("pod-identity", true,  false, STS_CREDS),
        ("pod-identity", false, true,  "pod-identity narrowed; own pod-identity"),
        ("pod-identity", true,  true,  STS_CREDS),
        ("container",    false, false, "container; own container"),
        ("container",    true,  false, STS_CREDS),
        ("container",    false, true,  "container narrowed; own container"),
        ("container",    true,  true,  STS_CREDS),
        ("imds",         false, false, "imds; own imds"),
        ("imds",         true,  false, STS_CREDS),
        ("imds",         false, true,  "imds narrowed; own imds"),
        ("imds",         true,  true,  STS_CREDS),
        ("mock",         false, false, "mock; own none"),
        ("mock",         true,  false, "error: sts on mock"),
        ("mock",         false, true,  ASSUME_WEB),
        ("mock",         true,  true,  ASSUME_WEB),
        ("auto",         false, false, "pod-identity; own pod-identity"),
        ("auto",         true,  false, STS_CREDS),
        ("auto",         false, true,  "pod-identity narrowed; own pod-identity"),
        ("auto",         true,  true,  STS_CREDS),
        ("own",          false, false, "token; own web"),
        ("own",          true,  false, "sts; own web"),
        ("own",          false, true,  ASSUME_WEB),
        ("own",          true,  true,  ASSUME_WEB),
    ];
    let mut cases = 0;
    for &(identity, sts, assume_role, want) in rows {
        for aws_secret in [false, true] {
            let mut asked = Asked {
                sts,
                assume_role: assume_role.then(|| ROLE.to_string()),
                ..case(identity)
            };
            if aws_secret {
                asked.secrets = vec![secret("id=db,type=aws-sm,name=prod/db")];
            }
            let want = match want {
                w if aws_secret && w.ends_with("own none") => "error: aws secret without aws",
                w => w,
            };
            let got = outcome(&asked);
            assert_eq!(
                got, want,
                "--identity {identity}, --sts {sts}, --assume-role {assume_role}, aws secret \
                 {aws_secret}"
            );
            if let Ok(serving) = asked.serving() {
                assert_eq!(serving.remote.len(), usize::from(aws_secret));
            }
            cases += 1;
        }
    }
    assert_eq!(cases, 64);
}

/// Without a region, STS's regional endpoint is unknown: `--sts` and `--assume-role` say so;
/// the rest needs none.
#[test]
fn a_region_is_needed_by_sts_and_assume_role_alone() {
    #[rustfmt::skip]
    let rows: &[(&str, bool, bool, &str)] = &[
        ("irsa",         false, false, "token; own web"),
        ("irsa",         true,  false, "error: sts needs a region"),
        ("github-oidc",  true,  false, "error: sts needs a region"),
        ("pod-identity", false, false, "pod-identity; own pod-identity"),
        ("pod-identity", false, true,  "error: assume-role needs a region"),
        ("imds",         false, true,  "error: assume-role needs a region"),
        ("mock",         true,  false, "error: sts on mock"),
        ("mock",         false, false, "mock; own none"),
    ];
    for &(identity, sts, assume_role, want) in rows {
        let asked = Asked {
            sts,
            assume_role: assume_role.then(|| ROLE.to_string()),
            region: None,
            ..case(identity)
        };
        assert_eq!(
            outcome(&asked),
            want,
            "{identity} --sts {sts} --assume-role {assume_role}"
        );
    }
}

/// Which identity is chosen, and from what: `--mock` wins, `auto` never takes IMDS, `own` takes
/// only the listener's own keys.
#[test]
fn the_choice_and_the_environment() {
    let none = Present::default();
    #[rustfmt::skip]
    let rows: &[(Choice, bool, Present, &str)] = &[
        (Choice::Auto,               false, EVERYTHING,       "token; own web"),
        (Choice::Auto,               false, none,             "error: none found"),
        (Choice::Auto,               false, present(GithubOidc), "github token; own github web"),
        (Choice::Auto,               false, present(Container),  "container; own container"),
        (Choice::Auto,               true,  none,             "mock; own none"),
        (Choice::Named(Imds),        false, none,             "imds; own imds"),
        (Choice::Named(Imds),        true,  none,             "mock; own none"),
        (Choice::Named(Mock),        false, EVERYTHING,       "mock; own none"),
        (Choice::Named(Irsa),        false, present(PodIdentity), "error: incomplete"),
        (Choice::Named(PodIdentity), false, present(Container),   "error: incomplete"),
        (Choice::Named(GithubOidc),  false, present(Irsa),        "error: incomplete"),
        (Choice::Own, false, Present { token_file: false, role_arn: false, ..EVERYTHING }, "error: none found"),
        (Choice::Own, false, Present { token_file: false, ..EVERYTHING }, "error: incomplete"),
        (Choice::Own, true,  none,                           "mock; own none"),
    ];
    for &(choice, mock, present, want) in rows {
        let asked = Asked {
            choice,
            mock,
            present,
            region: Some("eu-west-1".into()),
            ..Asked::default()
        };
        assert_eq!(outcome(&asked), want, "{choice:?} mock {mock} {present:?}");
    }
}

/// With no identity at all, `--secret` declarations are served alone; an AWS one among them
/// needs the helper's own credentials, which it then lacks. The last declaration of an id
/// wins.
#[test]
fn secrets_alone_and_the_last_declaration_of_an_id() {
    let asked = |specs: &[&str]| Asked {
        secrets: specs.iter().map(|s| secret(s)).collect(),
        ..Asked::default()
    };
    assert_eq!(outcome(&asked(&[])), "error: none found");
    assert_eq!(outcome(&asked(&["id=a,env=A"])), "secrets only; own none");
    let refused = asked(&["id=b,env=B", "id=a,type=aws-ssm,name=/x"]).serving();
    assert_eq!(
        refused.unwrap_err(),
        ServeError::AwsSecretWithoutAws {
            id: "a".into(),
            kind: "aws-ssm"
        }
    );
    // A later file declaration of the same id replaces the AWS one.
    let serving = asked(&["id=a,type=aws-ssm,name=/x", "id=a,src=/f", "id=c,env=C"])
        .serving()
        .unwrap();
    assert!(serving.remote.is_empty());
    let ids: Vec<&str> = serving.local.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a", "c"]);
    assert_eq!(serving.local[0].origin, Origin::File("/f".into()));
}

/// The messages users see, word for word.
#[test]
fn messages() {
    assert_eq!(
        ServeError::AssumeRoleOnWebIdentity(Irsa).to_string(),
        "--assume-role narrows a credential identity (pod-identity, container, imds); the irsa \
         identity is a web identity token: narrow it with --sts and --session-policy or \
         --policy-arn, for the role in --role-arn"
    );
    assert_eq!(
        ServeError::StsOnCredentials(Imds).to_string(),
        "--sts exchanges a web identity token, and the imds identity is credentials already: \
         drop --sts (its credentials are served as aws-credentials, aws-access-key-id, ...)"
    );
    let none = ServeError::NoIdentity(NoIdentity::NoneFound).to_string();
    assert!(
        none.starts_with("no identity: none of AWS_WEB_IDENTITY_TOKEN_FILE"),
        "{none}"
    );
    assert!(none.ends_with(&format!(". {NO_IDENTITY_HINT}")), "{none}");
}

fn listener(name: &str) -> ListenerAsked {
    ListenerAsked {
        name: name.into(),
        listen: Some(format!("unix:///run/{name}.sock")),
        asked: Asked {
            mock: true,
            ..Asked::default()
        },
        ..ListenerAsked::default()
    }
}

/// A list of ids, hosts or aliases in a table row.
type Ids = &'static [&'static str];
/// `allow_id`, `allow_registry`, `ecr_alias`, then the ids and registries answered.
type Row = (Ids, Ids, Ids, Option<Ids>, Option<Ids>);

const ALIAS: &str = "mirror.example=123456789012.dkr.ecr.us-east-1.amazonaws.com";

/// `allow_id` × `allow_registry` × ECR aliases: which ids and registries a listener answers.
#[test]
fn listener_policy_and_registries() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        // allow_id    allow_registry  ecr_alias  ids answered        registries answered
        (&[],          &[],            &[],       None,               None),
        (&[],          &[],            &[ALIAS],  None,               None),
        (&[],          &["r.example"], &[],       None,               Some(&["r.example"])),
        (&["a", "b"],  &[],            &[ALIAS],  Some(&["a", "b"]),  Some(&[])),
        (&["a"],       &["r.example"], &[],       Some(&["a"]),       Some(&["r.example"])),
    ];
    for &(ids, registries, aliases, want_ids, want_registries) in rows {
        let set = |items: Option<&[&str]>| {
            items.map(|i| i.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>())
        };
        let plan = Plan::new(vec![ListenerAsked {
            allow_ids: ids.iter().map(|s| s.to_string()).collect(),
            allow_registries: registries.iter().map(|s| s.to_string()).collect(),
            ecr_aliases: aliases.iter().map(|s| s.to_string()).collect(),
            ..listener("a")
        }])
        .unwrap();
        let l = &plan.listeners[0];
        assert_eq!(l.allowed_ids, set(want_ids), "{ids:?} {registries:?}");
        assert_eq!(
            l.allowed_registries,
            set(want_registries),
            "{ids:?} {registries:?}"
        );
        assert_eq!(l.hosts.aliases().count(), aliases.len());
        assert_eq!(l.socket, PathBuf::from("/run/a.sock"));
    }
}

/// Every listener is checked before any is used: the first problem, in listener order, names
/// its listener.
#[test]
fn every_listener_is_checked_and_the_problem_names_it() {
    let fails = |listeners: Vec<ListenerAsked>| Plan::new(listeners).unwrap_err().to_string();
    assert_eq!(
        fails(vec![listener("a"), listener("a")]),
        "two listeners are named \"a\"; give each a distinct name"
    );
    let no_listen = ListenerAsked {
        listen: None,
        ..listener("b")
    };
    assert_eq!(
        fails(vec![listener("a"), no_listen]),
        "listener b: --listen unix:///PATH is required"
    );
    let relative = ListenerAsked {
        listen: Some("unix://run/b.sock".into()),
        ..listener("b")
    };
    assert!(fails(vec![listener("a"), relative]).starts_with("listener b: listen address"));
    let alias = ListenerAsked {
        ecr_aliases: vec!["nonsense".into()],
        ..listener("b")
    };
    assert!(fails(vec![listener("a"), alias]).starts_with("listener b: --ecr-alias \"nonsense\""));
    let sts_mock = ListenerAsked {
        asked: Asked {
            mock: true,
            sts: true,
            region: Some("eu-west-1".into()),
            ..Asked::default()
        },
        ..listener("b")
    };
    assert!(
        fails(vec![listener("a"), sts_mock]).starts_with("listener b: --sts exchanges the real")
    );
    let plan = Plan::new(vec![listener("a"), listener("b")]).unwrap();
    let names: Vec<&str> = plan.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}

/// What the exchange and the narrowing need travels in the plan: STS's region, the role to
/// assume, and whether the raw token is served too.
#[test]
fn the_plan_carries_the_region_the_role_and_serve_identity() {
    let sts = Asked {
        sts: true,
        serve_identity: true,
        ..case("irsa")
    };
    assert_eq!(outcome(&sts), "sts and token; own web");
    assert_eq!(
        sts.serving().unwrap().builds,
        Some(Builds::Sts {
            github: false,
            serve_identity: true,
            region: "eu-west-1".into()
        })
    );
    let narrowed = Asked {
        assume_role: Some(ROLE.into()),
        ..case("imds")
    };
    assert_eq!(
        narrowed.serving().unwrap().builds,
        Some(Builds::Credentials {
            platform: Platform::Imds,
            assume_role: Some(AssumeRole {
                role: ROLE.into(),
                region: "eu-west-1".into()
            })
        })
    );
}

/// A config table's identity: `identity = "process"` (or a named one), its own keys, or only
/// secrets; none of these, or the process's with its own, is refused.
#[test]
fn a_config_table_settles_its_identity() {
    #[rustfmt::skip]
    let rows: &[(bool, Ids, bool, Result<(), TableIdentity>)] = &[
        // process  own keys                 secrets  verdict
        (true,  &[],                         false, Ok(())),
        (true,  &[],                         true,  Ok(())),
        (false, &["token_file", "role_arn"], false, Ok(())),
        (false, &["mock"],                   true,  Ok(())),
        (false, &[],                         true,  Ok(())),
        (false, &[],                         false, Err(TableIdentity::None)),
        (true,  &["mock"],                   false, Err(TableIdentity::Two { keys: "mock".into() })),
        (true,  &["token_file", "role_arn"], true,  Err(TableIdentity::Two { keys: "token_file and role_arn".into() })),
    ];
    for (process, keys, secrets, want) in rows {
        assert_eq!(
            &table_identity(*process, keys, *secrets),
            want,
            "{process} {keys:?} {secrets}"
        );
    }
}
