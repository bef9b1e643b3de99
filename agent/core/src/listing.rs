//! What the per-connection view and the log of recent cuts share: their query parameters and
//! the one parser of them into a [`Filter`], a bounded selection of the rows a filter matches
//! (for the API), and aligned columns (for `idlecut connections` and `idlecut cuts`).

use std::{collections::BTreeSet, fmt::Write as _, time::Duration};

use idlecut_api::{
    pods::{Pod, Workload},
    vocabulary::{ResetOrigin, Role, Signature, WorkloadKind},
};

use crate::{
    paths::Prefixes,
    settings::{PortMap, parse_duration},
};

/// A listing's endpoint and what its query string may hold.
#[derive(Clone, Copy, Debug)]
pub struct Listing {
    /// Such as `/api/v1/cuts`.
    pub endpoint: &'static str,
    /// Its parameters, in the order its messages list them.
    pub parameters: &'static [Parameter],
    /// Rows returned without `limit`.
    pub default_limit: usize,
}

/// A parameter of a listing's query string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parameter {
    Service,
    Role,
    Path,
    Namespace,
    Pod,
    /// The pod's owning workload: `kind/name` or a name of any kind.
    Workload,
    /// Connections only: open ones idle for at least this long.
    MinIdle,
    /// Cuts only.
    Signature,
    /// Cuts only: who sent the RST.
    Origin,
    Limit,
}

impl Parameter {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Role => "role",
            Self::Path => "path",
            Self::Namespace => "namespace",
            Self::Pod => "pod",
            Self::Workload => "workload",
            Self::MinIdle => "min_idle",
            Self::Signature => "signature",
            Self::Origin => "origin",
            Self::Limit => "limit",
        }
    }
}

/// What the agent watches, which a filter's `service` and `path` must name to match anything:
/// the services of its `--ports`, and the prefix lengths its paths are cut at.
#[derive(Clone, Debug)]
pub struct Watched {
    services: BTreeSet<String>,
    prefixes: Prefixes,
}

impl Watched {
    pub fn new(ports: &PortMap, prefixes: Prefixes) -> Self {
        Self {
            services: ports.services().map(str::to_owned).collect(),
            prefixes,
        }
    }

    fn service(&self, value: &str) -> Result<String, String> {
        if self.services.contains(value) {
            return Ok(value.to_owned());
        }
        let known: Vec<&str> = self.services.iter().map(String::as_str).collect();
        Err(format!(
            "service=`{value}`: this agent watches no such service; expected one of {} (its \
             --ports)",
            known.join(", ")
        ))
    }

    fn path(&self, value: &str) -> Result<String, String> {
        self.prefixes
            .parse_label(value)
            .map_err(|expected| format!("path=`{value}`: {expected}"))
    }
}

/// Which rows of a listing to return. One type for both listings: a listing's parameters say
/// which fields its query can set (`min_idle` for connections, `signature` and `origin` for
/// cuts); the others stay None.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// A service the agent watches.
    pub service: Option<String>,
    pub role: Option<Role>,
    /// A path label as the path table writes it, or `other`.
    pub path: Option<String>,
    /// Only processes in pods of this Kubernetes namespace, or of this pod.
    pub pods: PodFilter,
    /// Only open connections idle for at least this long.
    pub min_idle: Option<Duration>,
    pub signature: Option<Signature>,
    /// Only cuts by a RST from this origin.
    pub origin: Option<ResetOrigin>,
    pub limit: usize,
}

impl Filter {
    /// The filter a query string asks of `listing` (its pairs, in their order, as axum's
    /// `Query` reads them): each parameter one of the listing's, given at most once, with a
    /// value that can match (a service `watched` names, a path of its prefix lengths); a limit
    /// from 1 to `most`. The error names the parameter and says what it takes.
    pub fn from_query(
        listing: &Listing,
        query: &[(String, String)],
        watched: &Watched,
        most: usize,
    ) -> Result<Self, String> {
        let mut filter = Self {
            limit: listing.default_limit,
            ..Self::default()
        };
        let mut given: Vec<Parameter> = Vec::new();
        for (key, value) in query {
            let Some(&parameter) = listing.parameters.iter().find(|p| p.as_str() == key) else {
                let names: Vec<&str> = listing.parameters.iter().map(|p| p.as_str()).collect();
                return Err(format!(
                    "unknown parameter `{key}`: {} takes {}",
                    listing.endpoint,
                    names.join(", ")
                ));
            };
            if given.contains(&parameter) {
                return Err(format!(
                    "parameter `{key}` is given more than once: give each parameter at most once"
                ));
            }
            given.push(parameter);
            match parameter {
                Parameter::Service => filter.service = Some(watched.service(value)?),
                Parameter::Role => {
                    filter.role = Some(value.parse().map_err(|err| format!("role={err}"))?);
                }
                Parameter::Path => filter.path = Some(watched.path(value)?),
                Parameter::Namespace => filter.pods.namespace = Some(value.clone()),
                Parameter::Pod => filter.pods.pod = Some(value.clone()),
                Parameter::Workload => {
                    filter.pods.workload =
                        Some(value.parse().map_err(|err| format!("workload={err}"))?);
                }
                Parameter::MinIdle => {
                    filter.min_idle =
                        Some(parse_duration(value).map_err(|err| format!("min_idle: {err}"))?);
                }
                Parameter::Signature => {
                    filter.signature =
                        Some(value.parse().map_err(|err| format!("signature={err}"))?);
                }
                Parameter::Origin => {
                    filter.origin = Some(value.parse().map_err(|err| format!("origin={err}"))?);
                }
                Parameter::Limit => {
                    let most = most.max(1);
                    filter.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| (1..=most).contains(&n))
                        .ok_or_else(|| format!("limit=`{value}`: expected 1 to {most}"))?;
                }
            }
        }
        Ok(filter)
    }

    /// Whether `row` passes every criterion set.
    pub fn matches(&self, row: &impl Row) -> bool {
        self.service.as_ref().is_none_or(|s| s == row.service())
            && self.role.is_none_or(|role| role == row.role())
            && self.path.as_ref().is_none_or(|p| p == row.path())
            && self.pods.matches(row.pod())
            && self.min_idle.is_none_or(|min| {
                row.open_idle_seconds()
                    .is_some_and(|idle| idle >= min.as_secs_f64())
            })
            && self.signature.is_none_or(|s| Some(s) == row.signature())
            && self.origin.is_none_or(|o| Some(o) == row.origin())
    }
}

/// What a [`Filter`] reads of a row of either listing.
pub trait Row {
    fn service(&self) -> &str;
    fn role(&self) -> Role;
    fn path(&self) -> &str;
    /// The pod of the process that held it (None: the host's, or unknown).
    fn pod(&self) -> Option<&Pod>;
    /// How long it has been idle, if it is an open connection and that is known.
    fn open_idle_seconds(&self) -> Option<f64> {
        None
    }
    fn signature(&self) -> Option<Signature> {
        None
    }
    fn origin(&self) -> Option<ResetOrigin> {
        None
    }
}

/// The Kubernetes filters both listings take: a namespace, a pod (by name or UID), a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFilter {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub workload: Option<WorkloadFilter>,
}

/// `workload=deployment/imap-proxy`, or `workload=imap-proxy` for that name of any kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadFilter {
    pub kind: Option<WorkloadKind>,
    pub name: String,
}

impl WorkloadFilter {
    fn matches(&self, workload: &Workload) -> bool {
        self.kind.is_none_or(|kind| kind == workload.kind) && self.name == workload.name
    }
}

impl std::str::FromStr for WorkloadFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, name) = match text.split_once('/') {
            Some((kind, name)) => (Some(kind.parse().map_err(|err| format!("{err}"))?), name),
            None => (None, text),
        };
        if name.is_empty() {
            return Err(format!(
                "`{text}` names no workload: give kind/name (deployment/imap-proxy) or a name"
            ));
        }
        Ok(Self {
            kind,
            name: name.to_owned(),
        })
    }
}

impl PodFilter {
    /// Whether a row of a process in `pod` (None: the host's, or unknown) passes.
    pub fn matches(&self, pod: Option<&Pod>) -> bool {
        if self.namespace.is_none() && self.pod.is_none() && self.workload.is_none() {
            return true;
        }
        pod.is_some_and(|pod| {
            self.namespace
                .as_ref()
                .is_none_or(|namespace| pod.namespace.as_ref() == Some(namespace))
                && self
                    .pod
                    .as_ref()
                    .is_none_or(|name| pod.pod.as_ref() == Some(name) || pod.uid == *name)
                && self.workload.as_ref().is_none_or(|wanted| {
                    pod.workload
                        .as_ref()
                        .is_some_and(|workload| wanted.matches(workload))
                })
        })
    }
}

/// The owner column of both tables: the pod (`namespace/pod/container`), `host` for a process
/// of the host itself, `-` when no scan has seen the owner.
pub fn owner_cell(pod: Option<&Pod>, host: Option<bool>) -> String {
    match (pod, host) {
        (Some(pod), _) => pod.display_name(),
        (None, Some(true)) => "host".to_owned(),
        _ => "-".to_owned(),
    }
}

/// The workload column of both tables: the pod's owner as `kubectl` names it
/// (`deployment/imap-proxy`), `-` when it is not known (no `--cri-socket`, a bare pod, the host).
pub fn workload_cell(pod: Option<&Pod>) -> String {
    pod.and_then(|pod| pod.workload.as_ref())
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// The rows `filter` matches, at most its limit of them, and how many it matched in all.
pub fn select<R: Row + Clone>(rows: &[R], filter: &Filter) -> (usize, Vec<R>) {
    let mut total = 0;
    let mut selected = Vec::new();
    for row in rows.iter().filter(|row| filter.matches(*row)) {
        total += 1;
        if selected.len() < filter.limit {
            selected.push(row.clone());
        }
    }
    (total, selected)
}

/// `headers` and `rows` in columns as wide as their widest cell, two spaces apart, the way
/// `ss` prints sockets; the last column is not padded.
pub fn columns<const N: usize>(headers: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::parse_ports;

    #[derive(Clone, Debug, PartialEq)]
    struct Listed(&'static str, &'static str);

    impl Row for Listed {
        fn service(&self) -> &str {
            self.0
        }
        fn role(&self) -> Role {
            Role::Client
        }
        fn path(&self) -> &str {
            self.1
        }
        fn pod(&self) -> Option<&Pod> {
            None
        }
    }

    const LISTING: Listing = Listing {
        endpoint: "/api/v1/test",
        parameters: &[
            Parameter::Service,
            Parameter::Role,
            Parameter::Path,
            Parameter::Limit,
        ],
        default_limit: 3,
    };

    fn watched() -> Watched {
        Watched::new(
            &parse_ports("143=imap,587=submission").unwrap(),
            Prefixes { ipv4: 24, ipv6: 48 },
        )
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Filter, String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Filter::from_query(&LISTING, &pairs, &watched(), 10)
    }

    #[test]
    fn columns_align_and_selection_counts_all_it_matches() {
        let rows = [
            ["a".to_owned(), "long cell".to_owned(), "x".to_owned()],
            ["bbbb".to_owned(), "c".to_owned(), "last".to_owned()],
        ];
        assert_eq!(
            columns(["H1", "H2", "H3"], &rows),
            "H1    H2         H3\na     long cell  x\nbbbb  c          last\n"
        );
        let rows = [
            Listed("imap", "192.0.2.0/24"),
            Listed("submission", "192.0.2.0/24"),
            Listed("imap", "other"),
        ];
        let (total, first) = select(
            &rows,
            &parse(&[("service", "imap"), ("limit", "1")]).unwrap(),
        );
        assert_eq!((total, first), (2, vec![rows[0].clone()]));
    }

    #[test]
    fn each_parameter_is_given_at_most_once() {
        for (pairs, repeated) in [
            (&[("limit", "5"), ("limit", "6")][..], "limit"),
            (
                &[("limit", "5"), ("service", "imap"), ("limit", "5")],
                "limit",
            ),
            (&[("service", "imap"), ("service", "submission")], "service"),
            (&[("role", "client"), ("role", "client")], "role"),
        ] {
            let err = parse(pairs).expect_err("a repeated parameter");
            assert!(
                err.contains(&format!("`{repeated}` is given more than once")),
                "{pairs:?}: {err}"
            );
        }
        assert_eq!(parse(&[("limit", "5")]).unwrap().limit, 5);
        assert_eq!(parse(&[]).unwrap().limit, 3);
        let err = parse(&[("min_idle", "1m")]).expect_err("not this listing's");
        assert!(err.contains("unknown parameter `min_idle`"), "{err}");
        assert!(err.contains("service, role, path, limit"), "{err}");
    }

    #[test]
    fn a_service_must_be_one_the_agent_watches() {
        assert_eq!(
            parse(&[("service", "submission")])
                .unwrap()
                .service
                .as_deref(),
            Some("submission")
        );
        for value in ["imapp", "IMAP", "", "143"] {
            let err = parse(&[("service", value)]).expect_err(value);
            assert!(err.contains(&format!("service=`{value}`")), "{err}");
            assert!(err.contains("imap, submission"), "{value}: {err}");
        }
    }

    #[test]
    fn a_path_must_be_one_of_the_agents_prefixes_or_other() {
        let path = |value: &str| parse(&[("path", value)]).map(|filter| filter.path);
        assert_eq!(path("192.0.2.0/24"), Ok(Some("192.0.2.0/24".to_owned())));
        assert_eq!(path("other"), Ok(Some("other".to_owned())));
        // The label the path table writes, however the address is spelled.
        assert_eq!(
            path("2001:db8:1:0:0::/48"),
            Ok(Some("2001:db8:1::/48".to_owned()))
        );
        for (value, expected) in [
            // Another length than this agent's: no path could match.
            ("192.0.0.0/16", "192.0.0.0/24"),
            // Not the network address.
            ("192.0.2.7/24", "192.0.2.0/24"),
            // An address: its path, suggested.
            ("192.0.2.7", "192.0.2.0/24"),
            ("2001:db8:1:2::/64", "2001:db8:1::/48"),
            ("192.0.2.0/33", "192.0.2.0/24"),
            ("mail.example.net", "such as 192.0.2.0/24"),
            ("", "such as 192.0.2.0/24"),
            ("Other", "such as 192.0.2.0/24"),
        ] {
            let err = path(value).expect_err(value);
            assert!(err.contains(&format!("path=`{value}`")), "{err}");
            assert!(err.contains(expected), "{value}: {err}");
            assert!(err.contains("`other`"), "{value}: {err}");
        }
    }
}
