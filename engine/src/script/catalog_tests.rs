//! The catalog is the whole API: nothing is registered into rhai beside it, every entry
//! registers what its name says, and the standard-library entries exist in rhai.

use std::collections::BTreeSet;

use rhai::Engine;

use super::{Form, Imp, Recv, ENTRIES};
use crate::config::ScriptsConfig;
use crate::script::set::ScriptSet;

/// `(name, parameters)` of every function registered into `engine` (`get$x` for getters).
fn registered(engine: &Engine, standard: bool) -> BTreeSet<(String, usize)> {
    engine
        .collect_fn_metadata(None, |f| Some((f.metadata.name.to_string(), f.metadata.num_params)), standard)
        .into_iter()
        .collect()
}

fn rhai_name(form: Form, name: &str) -> String {
    match form {
        Form::Property => format!("get${name}"),
        Form::Method => name.to_string(),
    }
}

#[test]
fn every_function_the_api_registers_is_a_catalog_entry() {
    let engine = ScriptSet::build_engine(&ScriptsConfig::default(), None);
    let mut described = BTreeSet::new();
    for entry in ENTRIES {
        let mut alone = Engine::new_raw();
        entry.register(&mut alone);
        described.extend(registered(&alone, false));
    }
    let missing: Vec<_> = registered(&engine, false).difference(&described).cloned().collect();
    assert!(
        missing.is_empty(),
        "registered into rhai outside script/catalog.rs: {missing:?}; add an entry there \
         (Imp::RhaiOnly when the native tier cannot run it)"
    );
}

#[test]
fn each_entry_registers_what_its_name_and_signature_say() {
    for entry in ENTRIES.iter().filter(|e| !matches!(e.imp, Imp::Str(_) | Imp::List(_))) {
        let mut alone = Engine::new_raw();
        entry.register(&mut alone);
        let got = registered(&alone, false);
        let name = rhai_name(entry.form, entry.name);
        assert!(got.iter().any(|(n, _)| *n == name), "{}: registers {got:?}", entry.display());
        if let Some((params, _)) = entry.signature() {
            let arity = params.len() + usize::from(entry.recv != Recv::Global);
            assert!(got.contains(&(name, arity)), "{}: registers {got:?}", entry.display());
        }
    }
}

#[test]
fn standard_library_entries_exist_in_rhai() {
    let engine = Engine::new();
    let all = registered(&engine, true);
    for entry in ENTRIES.iter().filter(|e| matches!(e.imp, Imp::Str(_) | Imp::List(_))) {
        let (params, _) = entry.signature().expect("native shape");
        let wanted = (rhai_name(entry.form, entry.name), params.len() + 1);
        assert!(all.contains(&wanted), "{}: rhai has no {wanted:?}", entry.display());
    }
}
