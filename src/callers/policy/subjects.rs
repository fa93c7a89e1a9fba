//! A rule's `subjects`: globs, where `{caller}` stands for the caller's own name.
//!
//! The caller's name is put into the pattern escaped character by character, backslash
//! included, so whatever a caller is called, `{caller}` matches exactly that name and
//! nothing else. A pattern with `{caller}` is compiled once per caller and then kept: a
//! request never pays for a glob compilation of a caller seen before.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use globset::GlobMatcher;

use super::glob;

/// How many callers' compiled patterns one `{caller}` pattern keeps. Names come only from
/// proven identities; past this many the cache starts over rather than growing.
const CACHED_CALLERS: usize = 4096;

/// One entry of a rule's `subjects`.
#[derive(Clone, Debug)]
pub(super) enum SubjectPattern {
    /// Exactly the caller's name.
    Caller,
    /// A glob with `{caller}` inside.
    PerCaller(Arc<PerCaller>),
    /// A glob without `{caller}`, compiled once.
    Fixed(GlobMatcher),
}

impl SubjectPattern {
    /// A pattern of the policy file; the error names what does not compile.
    pub(super) fn parse(pattern: &str) -> Result<SubjectPattern, globset::Error> {
        if pattern == "{caller}" {
            return Ok(SubjectPattern::Caller);
        }
        if pattern.contains("{caller}") {
            // Checked with a stand-in name, so a broken glob is refused at load.
            glob(&pattern.replace("{caller}", "caller"))?;
            return Ok(SubjectPattern::PerCaller(Arc::new(PerCaller {
                text: pattern.to_owned(),
                compiled: Mutex::default(),
            })));
        }
        Ok(SubjectPattern::Fixed(glob(pattern)?.compile_matcher()))
    }

    pub(super) fn covers(&self, caller: &str, subject: &str) -> bool {
        match self {
            SubjectPattern::Caller => subject == caller,
            SubjectPattern::Fixed(glob) => glob.is_match(subject),
            SubjectPattern::PerCaller(pattern) => pattern
                .matcher(caller)
                .is_some_and(|matcher| matcher.is_match(subject)),
        }
    }
}

/// A `{caller}` pattern and its compilations so far.
#[derive(Debug)]
pub(super) struct PerCaller {
    text: String,
    compiled: Mutex<HashMap<String, GlobMatcher>>,
}

impl PerCaller {
    fn matcher(&self, caller: &str) -> Option<GlobMatcher> {
        let lock = || self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(matcher) = lock().get(caller) {
            return Some(matcher.clone());
        }
        // Compiled outside the lock: other callers are not held up by this one.
        let matcher = glob(&self.text.replace("{caller}", &escape(caller)))
            .ok()?
            .compile_matcher();
        let mut compiled = lock();
        if compiled.len() >= CACHED_CALLERS {
            compiled.clear();
        }
        compiled.insert(caller.to_owned(), matcher.clone());
        Some(matcher)
    }
}

/// `name` as a glob that matches only itself: every character the glob syntax gives a
/// meaning, backslash among them, is escaped with a backslash.
fn escape(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(
            c,
            '\\' | '*' | '?' | '[' | ']' | '{' | '}' | ',' | '!' | '^' | '-'
        ) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn covers(pattern: &str, caller: &str, subject: &str) -> bool {
        SubjectPattern::parse(pattern)
            .unwrap()
            .covers(caller, subject)
    }

    #[test]
    fn hostile_caller_names_match_only_themselves() {
        for caller in [
            ".../a\\*", "a\\", "*", "[a-z]", "{x,y}", "a\\[b]", "\\\\*", "{caller}",
        ] {
            let own = format!("{caller}-worker");
            assert!(covers("{caller}-worker", caller, &own), "{caller:?}");
            for other in ["a[ANYTHING]-worker", ".../aX-worker", "b-worker", "-worker"] {
                if other != own {
                    assert!(
                        !covers("{caller}-worker", caller, other),
                        "{caller:?} {other:?}"
                    );
                }
            }
        }
        // The glob parts of the pattern keep their meaning.
        assert!(covers("{caller}/worker-*", "svc\\*", "svc\\*/worker-7"));
        assert!(!covers("{caller}/worker-*", "svc\\*", "svcX/worker-7"));
    }

    #[test]
    fn compiled_once_per_caller() {
        let SubjectPattern::PerCaller(pattern) = SubjectPattern::parse("{caller}-*").unwrap()
        else {
            panic!("a {{caller}} pattern");
        };
        for _ in 0..3 {
            assert!(pattern.matcher("a").unwrap().is_match("a-1"));
            assert!(pattern.matcher("b").unwrap().is_match("b-1"));
        }
        let compiled = pattern
            .compiled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        assert_eq!(compiled.len(), 2);
    }

    proptest! {
        /// For any caller string, `{caller}` matches exactly that string.
        #[test]
        fn caller_matches_exactly_itself(caller in "\\PC{1,24}", other in "\\PC{0,24}") {
            let pattern = SubjectPattern::parse("x/{caller}-w").unwrap();
            let own = format!("x/{caller}-w");
            prop_assert!(pattern.covers(&caller, &own));
            let candidate = format!("x/{other}-w");
            prop_assert_eq!(pattern.covers(&caller, &candidate), other == caller);
        }

        /// Built only of glob syntax, a name still matches only itself.
        #[test]
        fn meta_names_match_exactly_themselves(
            caller in "[\\\\*?\\[\\]{},!^a-]{1,12}",
            other in "[\\\\*?\\[\\]{},!^a-]{0,12}",
        ) {
            let pattern = SubjectPattern::parse("<{caller}>").unwrap();
            let with_suffix = SubjectPattern::parse("{caller}*").unwrap();
            prop_assert_eq!(pattern.covers(&caller, &format!("<{other}>")), other == caller);
            prop_assert_eq!(
                with_suffix.covers(&caller, &other),
                other.starts_with(caller.as_str())
            );
        }
    }
}
