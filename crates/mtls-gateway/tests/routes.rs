//! Route policies and the case of request paths (`route_match`), with curl as the client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{curl, Files, Gateway, Upstream};

const ADMIN_ROUTE: &str = r#"
[[listener.route]]
path_prefix = "/admin"
policy = { allow_cn = ["ops"] }
"#;

#[test]
fn case_insensitive_route_match_gives_admin_in_capitals_the_admin_route_policy() {
    let f = Files::new();
    let up = Upstream::start();
    let g = Gateway::start(
        &f,
        up.addr,
        &["app", "ops"],
        &format!("route_match = \"case-insensitive\"\n{ADMIN_ROUTE}"),
    );
    let (app, ops) = (f.client("app"), f.client("ops"));
    for path in ["/admin/x", "/ADMIN/x", "/Admin/users", "/aDmIn"] {
        let r = curl(&g, &f, &app, path, &[]);
        assert_eq!(r.status, 403, "{path}: {} {}", r.body, r.stderr);
        assert!(r.body.contains("INVALID_CERT"), "{path}: {}", r.body);
        let r = curl(&g, &f, &ops, path, &[]);
        assert_eq!(r.status, 200, "{path}: {} {}", r.body, r.stderr);
        assert!(up.last().request_line.contains(path), "{:?}", up.last());
    }
    // Other paths keep the listener's policy.
    let r = curl(&g, &f, &app, "/ADMINISTRATIVELY-NOT/x", &[]);
    assert_eq!(
        r.status, 403,
        "a longer segment still starts with the prefix"
    );
    let r = curl(&g, &f, &app, "/api/x", &[]);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    // Beyond ASCII, case folding is the upstream's (Java folds the dotless ı to I, ſ to S):
    // such paths are refused rather than left to the listener's policy.
    // So are segments ending in a dot or a space, which Windows drops (IIS serves
    // `/admin./x` as `/admin/x`).
    for path in [
        "/adm%C4%B1n/x",
        "/%C5%BFecret",
        "/caf%C3%A9",
        "/admin./x",
        "/ADMIN%20/x",
        "/admin.",
    ] {
        let r = curl(&g, &f, &ops, path, &[]);
        assert_eq!(r.status, 400, "{path}: {} {}", r.body, r.stderr);
        assert!(r.body.contains("INVALID_PATH"), "{path}: {}", r.body);
    }
}

#[test]
fn exact_route_match_is_the_default_and_unchanged() {
    let f = Files::new();
    let up = Upstream::start();
    let g = Gateway::start(&f, up.addr, &["app", "ops"], ADMIN_ROUTE);
    let app = f.client("app");
    let r = curl(&g, &f, &app, "/admin/x", &[]);
    assert_eq!(r.status, 403, "{} {}", r.body, r.stderr);
    // Case-sensitive, as RFC 3986 has paths: another path, the listener's policy.
    let r = curl(&g, &f, &app, "/ADMIN/x", &[]);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    assert!(up.last().request_line.starts_with("GET /ADMIN/x "));
    // Non-ASCII paths are compared byte for byte here: nothing to refuse.
    let r = curl(&g, &f, &app, "/caf%C3%A9", &[]);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    // Spelled out, the same.
    drop(g);
    let g = Gateway::start(
        &f,
        up.addr,
        &["app", "ops"],
        &format!("route_match = \"exact\"\n{ADMIN_ROUTE}"),
    );
    assert_eq!(curl(&g, &f, &app, "/admin/x", &[]).status, 403);
    assert_eq!(curl(&g, &f, &app, "/ADMIN/x", &[]).status, 200);
}

#[test]
fn routes_that_collide_under_the_route_match_are_refused() {
    let f = Files::new();
    let up = Upstream::start();
    let two = |a: &str, b: &str| {
        format!(
            "[[listener.route]]\npath_prefix = \"{a}\"\npolicy = {{ allow_cn = [\"ops\"] }}\n\
             [[listener.route]]\npath_prefix = \"{b}\"\npolicy = {{ allow_cn = [\"app\"] }}\n"
        )
    };
    let refused = |extra: &str| match Gateway::try_start(&f, up.addr, &["app"], extra) {
        Ok(_) => panic!("started with {extra}"),
        Err(e) => e.to_string(),
    };
    let e = refused(&format!(
        "route_match = \"case-insensitive\"\n{}",
        two("/admin", "/ADMIN")
    ));
    assert!(
        e.contains("\"/admin\" and \"/ADMIN\"") && e.contains("case-insensitive"),
        "{e}"
    );
    let e = refused(&two("/admin", "/admin"));
    assert!(e.contains("\"/admin\" and \"/admin\""), "{e}");
    let e = refused("route_match = \"caseless\"\n");
    assert!(e.contains("route_match") || e.contains("caseless"), "{e}");
    // Distinct under exact matching: both stand.
    let g = Gateway::start(&f, up.addr, &["app"], &two("/admin", "/ADMIN"));
    let app = f.client("app");
    assert_eq!(curl(&g, &f, &app, "/admin/x", &[]).status, 403);
    assert_eq!(curl(&g, &f, &app, "/ADMIN/x", &[]).status, 200);
}

#[test]
fn explain_follows_the_route_match() {
    use rustls_pki_types::pem::PemObject;
    let f = Files::new();
    let app = f.client("app");
    let chain = rustls_pki_types::CertificateDer::pem_file_iter(&app.chain)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let upstream = "127.0.0.1:9".parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (mode, allowed) in [("exact", true), ("case-insensitive", false)] {
        let path = f.config(
            upstream,
            &["app", "ops"],
            &format!("route_match = \"{mode}\"\n{ADMIN_ROUTE}"),
        );
        let cfg = mtls_gateway::GatewayConfig::from_file(&path).unwrap();
        let l = mtls_gateway::explain::listener(&cfg, None).unwrap();
        let x = rt
            .block_on(mtls_gateway::explain::explain(
                &cfg,
                l,
                &chain,
                "/ADMIN/x",
                time::OffsetDateTime::now_utc(),
            ))
            .unwrap();
        assert_eq!(x.allowed, allowed, "{mode}: {x:?}");
        let policy = x.checks.iter().find(|c| c.name == "policy").unwrap();
        let route = if allowed {
            "listener policy"
        } else {
            "route /admin"
        };
        assert!(policy.detail.starts_with(route), "{mode}: {policy:?}");
    }
}

/// A prefix written with a trailing slash (so that `/admin/` does not also cover
/// `/administrators`) covers `/admin` itself too: upstreams commonly serve `/admin` and
/// `/admin/` alike, and it fell to the listener's looser policy.
#[test]
fn a_trailing_slash_prefix_covers_the_path_without_it() {
    let f = Files::new();
    let up = Upstream::start();
    let route =
        "[[listener.route]]\npath_prefix = \"/admin/\"\npolicy = { allow_cn = [\"ops\"] }\n";
    let g = Gateway::start(&f, up.addr, &["app", "ops"], route);
    let (app, ops) = (f.client("app"), f.client("ops"));
    for path in ["/admin", "/admin/", "/admin/users"] {
        let r = curl(&g, &f, &app, path, &[]);
        assert_eq!(r.status, 403, "{path}: {} {}", r.body, r.stderr);
        assert_eq!(curl(&g, &f, &ops, path, &[]).status, 200, "{path}");
    }
    for path in ["/administrators", "/adminx", "/api"] {
        let r = curl(&g, &f, &app, path, &[]);
        assert_eq!(r.status, 200, "{path}: {} {}", r.body, r.stderr);
    }
}

/// A route prefix that no routed request path can start with (routed paths are canonical)
/// would never apply its policy: refused at load instead of silently ignored.
#[test]
fn route_prefixes_that_can_never_match_are_refused() {
    let f = Files::new();
    let up = Upstream::start();
    let route = |prefix: &str| {
        format!(
            "[[listener.route]]\npath_prefix = \"{prefix}\"\npolicy = {{ allow_cn = [\"ops\"] }}\n"
        )
    };
    for prefix in ["admin", "/a//b", "/a;b", "/%61dmin", "/a/../b", "/a/./b"] {
        match Gateway::try_start(&f, up.addr, &["app"], &route(prefix)) {
            Ok(_) => panic!("started with route prefix {prefix:?}"),
            Err(e) => assert!(e.to_string().contains("can never match"), "{prefix}: {e}"),
        }
    }
    let e = Gateway::try_start(
        &f,
        up.addr,
        &["app"],
        &format!(
            "route_match = \"case-insensitive\"\n{}",
            route("/caf\u{e9}")
        ),
    )
    .err()
    .expect("a non-ASCII prefix under case-insensitive matching");
    assert!(e.to_string().contains("ASCII only"), "{e}");
    // Canonical prefixes, with a %-escape a request path can carry too, stand.
    Gateway::start(&f, up.addr, &["app"], &route("/files/a%20b"));
}

/// A route whose policy says `match = "all"` with `allow_any_trusted` (every trusted client
/// would pass the lists it seems to narrow) keeps the gateway from starting, naming the route;
/// `match = "all"` with lists starts.
#[test]
fn a_route_combining_allow_any_trusted_with_match_all_is_refused() {
    let f = Files::new();
    let up = Upstream::start();
    let route = |policy: &str| {
        format!("[[listener.route]]\npath_prefix = \"/admin\"\npolicy = {{ {policy} }}\n")
    };
    let e = Gateway::try_start(
        &f,
        up.addr,
        &["app"],
        &route(r#"match = "all", allow_any_trusted = true, allow_cn = ["ops"]"#),
    )
    .err()
    .expect("started with allow_any_trusted and match = all");
    let e = e.to_string();
    assert!(
        e.contains("\"/admin\"") && e.contains("cannot be combined"),
        "{e}"
    );
    Gateway::start(
        &f,
        up.addr,
        &["app"],
        &route(r#"match = "all", allow_cn = ["ops"], allow_ou = ["platform"]"#),
    );
}

/// `extra_hosts` takes host names and IP addresses as requests name them: an entry with a
/// port, brackets or a wildcard (which no request's host would ever equal) is refused at load.
#[test]
fn extra_hosts_are_names_or_addresses() {
    let f = Files::new();
    let up = Upstream::start();
    for bad in ["a.internal:443", "[::1]", "*.internal", ""] {
        match Gateway::try_start(
            &f,
            up.addr,
            &["app"],
            &format!("extra_hosts = [\"{bad}\"]\n"),
        ) {
            Ok(_) => panic!("started with extra_hosts = [{bad:?}]"),
            Err(e) => assert!(e.to_string().contains("extra_hosts"), "{e}"),
        }
    }
    Gateway::start(
        &f,
        up.addr,
        &["app"],
        "extra_hosts = [\"Admin.Internal.\", \"0:0:0:0:0:0:0:1\", \"10.0.0.5\"]\n",
    );
}
