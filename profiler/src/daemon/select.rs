//! Which processes the daemon profiles: `--select` specs, any of which selects a process.
use std::{fmt, str::FromStr};

/// What the daemon knows of a candidate process without opening its executable.
#[derive(Clone, Debug, Default)]
pub struct Candidate {
    /// `/proc/PID/exe` as the kernel names it (the path in the process's own mount namespace).
    pub exe: String,
    /// Arguments joined by spaces.
    pub cmdline: String,
    /// The cgroup paths of `/proc/PID/cgroup`, one per line.
    pub cgroup: String,
}

impl Candidate {
    fn exe_name(&self) -> &str {
        let path = self.exe.trim_end_matches(" (deleted)");
        path.rsplit('/').next().unwrap_or(path)
    }
}

#[derive(Clone, Debug)]
pub enum Selector {
    /// `exe=NAME`: the executable's base name is NAME; with a `/`, a glob on the full path.
    ExeName(String),
    ExePath(glob::Pattern),
    /// `cmdline=REGEX`: the command line matches the regex (unanchored).
    Cmdline(regex::Regex),
    /// `cgroup=PATH`: a cgroup path of the process contains PATH (a container's or a pod's
    /// cgroup, e.g. `kubepods`, or a container id).
    Cgroup(String),
    /// `go`: every Go program (the executable carries Go build info).
    Go,
    /// `A+B`: all of them (e.g. `go+cgroup=kubepods`: Go programs in pods).
    All(Vec<Selector>),
}

impl Selector {
    /// Whether the candidate is selected; `is_go` reads the executable, only when a `go`
    /// selector needs it.
    pub fn selects(&self, candidate: &Candidate, is_go: &mut impl FnMut() -> bool) -> bool {
        match self {
            Self::Go => is_go(),
            // Decide on what is known first: the executable is read only if it still matters.
            Self::All(parts) => {
                !parts
                    .iter()
                    .any(|part| part.matches(candidate) == Some(false))
                    && parts.iter().all(|part| part.selects(candidate, is_go))
            }
            other => other.matches(candidate).unwrap_or(false),
        }
    }

    /// Whether the selector is decided by the candidate alone (`None` for `go`, which needs
    /// the executable read).
    pub fn matches(&self, candidate: &Candidate) -> Option<bool> {
        match self {
            Self::ExeName(name) => Some(candidate.exe_name() == name),
            Self::ExePath(pattern) => {
                Some(pattern.matches(candidate.exe.trim_end_matches(" (deleted)")))
            }
            Self::Cmdline(regex) => Some(regex.is_match(&candidate.cmdline)),
            Self::Cgroup(part) => Some(candidate.cgroup.lines().any(|line| {
                line.rsplit(':')
                    .next()
                    .is_some_and(|path| path.contains(part.as_str()))
            })),
            Self::Go => None,
            Self::All(parts) => {
                let mut all = Some(true);
                for part in parts {
                    match part.matches(candidate) {
                        Some(false) => return Some(false),
                        None => all = None,
                        Some(true) => {}
                    }
                }
                all
            }
        }
    }
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        // `+` joins selectors that must all match. (A regex with `+` in a cmdline= part must
        // then be the last part: everything after `cmdline=` is its regex.)
        if let Some((first, rest)) = spec.split_once('+')
            && !first.starts_with("cmdline=")
        {
            let mut parts = vec![first.parse::<Selector>()?];
            match rest.parse::<Selector>()? {
                Self::All(more) => parts.extend(more),
                one => parts.push(one),
            }
            return Ok(Self::All(parts));
        }
        if spec == "go" {
            return Ok(Self::Go);
        }
        let Some((kind, value)) = spec.split_once('=') else {
            return Err(format!(
                "{spec:?} is not a selector: use exe=NAME, exe=/PATH/GLOB*, cmdline=REGEX, \
                 cgroup=PATH or go, joined by + to require all"
            ));
        };
        if value.is_empty() {
            return Err(format!("{spec:?}: the {kind} selector needs a value"));
        }
        match kind {
            "exe" if value.contains('/') => glob::Pattern::new(value)
                .map(Self::ExePath)
                .map_err(|error| format!("{spec:?}: bad path pattern: {error}")),
            "exe" => Ok(Self::ExeName(value.to_owned())),
            "cmdline" => regex::Regex::new(value)
                .map(Self::Cmdline)
                .map_err(|error| {
                    format!(
                        "{spec:?}: bad regex: {}",
                        error.to_string().lines().last().unwrap_or_default()
                    )
                }),
            "cgroup" => Ok(Self::Cgroup(value.to_owned())),
            _ => Err(format!(
                "{spec:?}: unknown selector {kind:?}: use exe=, cmdline=, cgroup= or go"
            )),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExeName(name) => write!(f, "exe={name}"),
            Self::ExePath(pattern) => write!(f, "exe={pattern}"),
            Self::Cmdline(regex) => write!(f, "cmdline={regex}"),
            Self::Cgroup(part) => write!(f, "cgroup={part}"),
            Self::Go => write!(f, "go"),
            Self::All(parts) => {
                let parts: Vec<String> = parts.iter().map(ToString::to_string).collect();
                write!(f, "{}", parts.join("+"))
            }
        }
    }
}

/// A user-defined label `KEY=VALUE` put on every series of every target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub name: String,
    pub value: String,
}

/// Label names mapscope itself uses on target series.
const RESERVED: &[&str] = &[
    "pid",
    "exe",
    "go_version",
    "container",
    "reason",
    "site",
    "function",
    "location",
    "kind",
    "probe",
    "le",
    "version",
    "job",
    "instance",
];

impl FromStr for Label {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let Some((name, value)) = spec.split_once('=') else {
            return Err(format!("{spec:?} is not a label: use KEY=VALUE"));
        };
        let valid = name.chars().enumerate().all(|(index, c)| {
            c == '_' || c.is_ascii_alphabetic() || (index > 0 && c.is_ascii_digit())
        });
        if name.is_empty() || !valid || name.starts_with("__") {
            return Err(format!(
                "{spec:?}: {name:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not __*)"
            ));
        }
        if RESERVED.contains(&name) {
            return Err(format!(
                "{spec:?}: mapscope already uses the label {name:?}"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(exe: &str, cmdline: &str, cgroup: &str) -> Candidate {
        Candidate {
            exe: exe.into(),
            cmdline: cmdline.into(),
            cgroup: cgroup.into(),
        }
    }

    #[test]
    fn selectors_parse_and_match() {
        let checkout = candidate(
            "/srv/bin/checkout",
            "/srv/bin/checkout --port 8080",
            "0::/kubepods.slice/pod12/cri-containerd-ab.scope",
        );
        let yes = |spec: &str| spec.parse::<Selector>().unwrap().matches(&checkout);
        assert_eq!(yes("exe=checkout"), Some(true));
        assert_eq!(yes("exe=check"), Some(false));
        assert_eq!(yes("exe=/srv/*/checkout"), Some(true));
        assert_eq!(yes("exe=/opt/*"), Some(false));
        assert_eq!(yes("cmdline=--port 80[0-9]0"), Some(true));
        assert_eq!(yes("cmdline=^nginx"), Some(false));
        assert_eq!(yes("cgroup=kubepods"), Some(true));
        assert_eq!(yes("cgroup=system.slice"), Some(false));
        assert_eq!(yes("go"), None);
        let deleted = candidate("/srv/bin/checkout (deleted)", "", "");
        assert_eq!(
            "exe=checkout"
                .parse::<Selector>()
                .unwrap()
                .matches(&deleted),
            Some(true)
        );
    }

    #[test]
    fn plus_requires_every_part() {
        let pod = candidate(
            "/app/api",
            "/app/api",
            "0::/kubepods.slice/pod1/cri-containerd-x.scope",
        );
        let host = candidate(
            "/usr/bin/containerd",
            "containerd",
            "0::/system.slice/containerd.service",
        );
        let spec: Selector = "go+cgroup=kubepods".parse().unwrap();
        assert_eq!(spec.to_string(), "go+cgroup=kubepods");
        let mut go = || true;
        assert!(spec.selects(&pod, &mut go));
        assert!(!spec.selects(&host, &mut go));
        assert!(!spec.selects(&pod, &mut || false));
        // The executable is not read when another part already rules the process out.
        let mut read = false;
        assert!(!spec.selects(&host, &mut || {
            read = true;
            true
        }));
        assert!(
            !read,
            "the executable was read for a process the cgroup rules out"
        );
        let three: Selector = "exe=api+cgroup=pod1+cmdline=a(p)+i".parse().unwrap();
        assert!(three.selects(&pod, &mut go));
        assert!("go+java".parse::<Selector>().is_err());
    }

    #[test]
    fn bad_selectors_say_why() {
        for (spec, reason) in [
            ("java", "not a selector"),
            ("exe=", "needs a value"),
            ("cmdline=(", "bad regex"),
            ("exe=/a/[", "bad path pattern"),
            ("user=root", "unknown selector"),
        ] {
            let error = spec.parse::<Selector>().unwrap_err();
            assert!(error.contains(reason), "{spec}: {error}");
        }
    }

    #[test]
    fn labels_are_checked() {
        assert_eq!(
            "cluster=prod-eu".parse::<Label>().unwrap(),
            Label {
                name: "cluster".into(),
                value: "prod-eu".into()
            }
        );
        for bad in ["cluster", "1x=a", "a-b=c", "__x=1", "pid=1", "=v"] {
            assert!(bad.parse::<Label>().is_err(), "{bad}");
        }
    }
}
