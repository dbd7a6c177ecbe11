//! The policy file: parsing, refusals, and what each role may do.
use super::*;

fn caller(uid: u32, groups: &[u32], exe: &str) -> Identity {
    Identity {
        uid,
        gid: groups.first().copied().unwrap_or(uid),
        pid: 1,
        groups: groups.to_vec(),
        exe: exe.into(),
    }
}

#[test]
fn a_peer_is_described_only_while_its_pid_has_its_ids() {
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let me = std::process::id() as i32;
    let c = Identity::from_peer(uid, gid, Some(me));
    assert!(c.groups.contains(&gid));
    assert_eq!(
        c.exe,
        std::env::current_exe().unwrap().display().to_string()
    );
    // Credentials that this pid's process does not have (its pid reused
    // by another user's process, say): nothing but the credentials.
    let other = Identity::from_peer(uid.wrapping_add(1), gid, Some(me));
    assert_eq!(other.groups, vec![gid]);
    assert_eq!(other.exe, "");
    let other = Identity::from_peer(uid, gid.wrapping_add(1), Some(me));
    assert_eq!(other.groups, vec![gid.wrapping_add(1)]);
    assert_eq!(other.exe, "");
    // No pid (another pid namespace): the same.
    let none = Identity::from_peer(uid, gid, None);
    assert_eq!((none.groups, none.exe), (vec![gid], String::new()));
    assert!(Identity::same_ids(
        "Uid:\t5\t7\t7\t7\nGid:\t3\t9\t9\t9\n",
        7,
        9
    ));
    assert!(!Identity::same_ids(
        "Uid:\t7\t5\t5\t5\nGid:\t9\t9\t9\t9\n",
        7,
        9
    ));
    assert!(!Identity::same_ids("Name:\tx\n", 7, 9));
}

const POLICY: &str = r#"
[[principal]]
name = "ehr"
uids = [1001]
roles = ["app"]
keys = ["patients", "images/*"]
require_context = ["tenant"]

[[principal]]
name = "backup"
gids = [2000]
exe = "/usr/bin/backup"
roles = ["app"]
keys = ["backups"]

[[principal]]
name = "ops"
uids = [0]
roles = ["admin", "custodian"]
break_glass = true
break_glass_keys = ["patients"]

[[principal]]
name = "audit"
uids = [3000]
roles = ["auditor"]
"#;

fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn patterns() {
    assert!(pattern_matches("*", "anything"));
    assert!(pattern_matches("images/*", "images/mri"));
    assert!(!pattern_matches("images/*", "imagesX"));
    assert!(pattern_matches("a*c", "abbbc"));
    assert!(!pattern_matches("a*c", "abbbd"));
    assert!(pattern_matches("exact", "exact"));
    assert!(!pattern_matches("exact", "exact2"));
}

#[test]
fn app_grants_keys_and_context() {
    let p = Policy::parse(POLICY).unwrap();
    let ehr = caller(1001, &[1001], "/usr/bin/ehr");
    let t = ctx(&[("tenant", "a")]);
    let g = p
        .authorize(
            &ehr,
            &Action::DataKey {
                key: "patients",
                context: &t,
            },
        )
        .unwrap();
    assert_eq!((g.principal.as_str(), g.role), ("ehr", "app"));
    assert!(p
        .authorize(
            &ehr,
            &Action::DataKey {
                key: "images/ct",
                context: &t
            }
        )
        .is_ok());
    let e = p
        .authorize(
            &ehr,
            &Action::DataKey {
                key: "backups",
                context: &t,
            },
        )
        .unwrap_err();
    assert!(e.0.contains("no app grant for key \"backups\""), "{e}");
    let e = p
        .authorize(
            &ehr,
            &Action::DataKey {
                key: "patients",
                context: &ctx(&[]),
            },
        )
        .unwrap_err();
    assert!(
        e.0.contains("requires the context to contain \"tenant\""),
        "{e}"
    );
    // An app cannot manage keys or unseal.
    assert!(p.authorize(&ehr, &Action::KeyAdmin).is_err());
    assert!(p.authorize(&ehr, &Action::Ceremony).is_err());
}

#[test]
fn groups_and_exe() {
    let p = Policy::parse(POLICY).unwrap();
    let ok = caller(5000, &[5000, 2000], "/usr/bin/backup");
    let wrong_exe = caller(5000, &[5000, 2000], "/usr/bin/python3");
    let c = ctx(&[]);
    assert!(p
        .authorize(
            &ok,
            &Action::DataKey {
                key: "backups",
                context: &c
            }
        )
        .is_ok());
    assert!(p
        .authorize(
            &wrong_exe,
            &Action::DataKey {
                key: "backups",
                context: &c
            }
        )
        .is_err());
    let stranger = caller(4242, &[4242], "/bin/sh");
    let e = p.authorize(&stranger, &Action::Status).unwrap_err();
    assert!(e.0.contains("uid 4242"), "{e}");
    assert!(
        !e.0.contains("ehr"),
        "denials must not reveal the policy: {e}"
    );
}

#[test]
fn roles_and_break_glass() {
    let p = Policy::parse(POLICY).unwrap();
    let ops = caller(0, &[0], "/usr/bin/keywarden");
    assert_eq!(p.authorize(&ops, &Action::KeyAdmin).unwrap().role, "admin");
    assert_eq!(
        p.authorize(&ops, &Action::Ceremony).unwrap().role,
        "custodian"
    );
    assert!(p
        .authorize(&ops, &Action::BreakGlass { key: "patients" })
        .is_ok());
    assert!(p
        .authorize(&ops, &Action::BreakGlass { key: "backups" })
        .is_err());
    // An admin is not an app without break-glass.
    assert!(p
        .authorize(
            &ops,
            &Action::DataKey {
                key: "patients",
                context: &ctx(&[])
            }
        )
        .is_err());
    let aud = caller(3000, &[3000], "/x");
    assert_eq!(p.authorize(&aud, &Action::KeyRead).unwrap().role, "auditor");
    assert!(p.authorize(&aud, &Action::KeyAdmin).is_err());
    assert!(p.authorize(&aud, &Action::Seal).is_err());
}

#[test]
fn the_mac_role_grants_macs_on_its_keys_only() {
    let p = Policy::parse(
        "[[principal]]\nname = \"portal\"\nuids = [10]\nroles = [\"mac\"]\nkeys = [\"clinic-*-index\"]\n\
         [[principal]]\nname = \"ehr\"\nuids = [11]\nroles = [\"app\"]\nkeys = [\"*\"]\n",
    )
    .unwrap();
    let portal = caller(10, &[], "/x");
    let ehr = caller(11, &[], "/x");
    let g = p
        .authorize(
            &portal,
            &Action::Mac {
                key: "clinic-a-index",
            },
        )
        .unwrap();
    assert_eq!((g.principal.as_str(), g.role), ("portal", "mac"));
    assert!(p
        .authorize(&portal, &Action::Mac { key: "clinic-a" })
        .is_err());
    // The mac role grants no data keys, and the app role no MACs.
    let none = ctx(&[]);
    assert!(p
        .authorize(
            &portal,
            &Action::DataKey {
                key: "clinic-a-index",
                context: &none
            }
        )
        .is_err());
    let e = p.authorize(&ehr, &Action::Mac { key: "x" }).unwrap_err();
    assert!(e.0.contains("needs the mac role"), "{}", e.0);
    assert!(p.has_role(&portal, Role::Mac) && !p.has_role(&ehr, Role::Mac));
    // require_context is the app role's only.
    assert!(Policy::parse(
        "[[principal]]\nname = \"a\"\nuids = [1]\nroles = [\"mac\"]\nkeys = [\"k\"]\nrequire_context = [\"t\"]\n"
    )
    .is_err());
}

#[test]
fn invalid_policies_are_refused() {
    for (bad, needle) in [
        ("", "no [[principal]]"),
        ("[[principal]]\nname = \"a\"\nuids = [1]\nroles = [\"app\"]\n", "no keys"),
        ("[[principal]]\nname = \"a\"\nroles = [\"admin\"]\n", "names no users"),
        ("[[principal]]\nname = \"a\"\nuids = [1]\nroles = [\"root\"]\n", "unknown variant"),
        ("[[principal]]\nname = \"a\"\nuids = [1]\nroles = [\"admin\"]\nsuperuser = true\n", "unknown field"),
        ("[[principal]]\nname = \"a\"\nusers = [\"no-such-user-kw\"]\nroles = [\"admin\"]\n", "unknown user"),
        ("[[principal]]\nname = \"a\"\nuids = [1]\nroles = [\"app\"]\nbreak_glass = true\nkeys = [\"k\"]\nbreak_glass_keys = [\"k\"]\n", "admins only"),
        ("[[principal]]\nname = \"a\"\nuids = [1]\nroles = [\"app\"]\nkeys = [\"bad key\"]\n", "key pattern"),
        ("[[principal]]\nname = \"a\"\nuids = [1]\nroles = [\"admin\"]\n[[principal]]\nname = \"a\"\nuids = [2]\nroles = [\"admin\"]\n", "twice"),
    ] {
        let e = Policy::parse(bad).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    }
    assert!(Policy::parse(
        "[[principal]]\nname = \"root\"\nusers = [\"root\"]\nroles = [\"admin\"]\n"
    )
    .is_ok());
}
