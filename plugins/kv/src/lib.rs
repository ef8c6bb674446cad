//! `kv`: a persistent key–value store for scripts, on the daemon's embedded store.
//!
//! ```rhai
//! // rate limit: at most 20 messages per sender per hour
//! fn mail_from(ctx) {
//!     let n = kv::incr("rate:" + ctx.sender, 3600);
//!     if n > 20 { return tempfail(451, "4.7.1 slow down"); }
//! }
//! ```
//!
//! Functions: `kv::get(k)` (the value, or `()` when missing or expired), `kv::set(k, v)`,
//! `kv::set(k, v, ttl_secs)`, `kv::incr(k)` / `kv::incr(k, ttl_secs)` (atomic; the TTL starts
//! when the key is created, a fixed window), `kv::delete(k)` (true if it existed). Values are
//! strings, integers, floats and bools. Every write is one durable redb transaction, so
//! values survive restarts and concurrent `incr`s from many sessions never lose a count.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mailflow_plugin::{error, parse_config, Plugin, PluginContext, PluginError};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use rhai::{Dynamic, EvalAltResult, Module};
use serde::{Deserialize, Serialize};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("plugin_kv");
/// Keys and string values are bounded so one script cannot fill the disk in one call.
const MAX_KEY_LEN: usize = 1024;
const MAX_VALUE_LEN: usize = 64 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KvConfig {}

/// A stored value and its expiry (unix seconds, 0 = never).
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    value: Value,
    expires: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Value {
    fn from_dynamic(v: &Dynamic) -> Result<Value, Box<EvalAltResult>> {
        if let Ok(b) = v.as_bool() {
            return Ok(Value::Bool(b));
        }
        if let Ok(i) = v.as_int() {
            return Ok(Value::Int(i));
        }
        if let Ok(f) = v.as_float() {
            return Ok(Value::Float(f));
        }
        if v.is_string() {
            let s = v.clone().into_string().unwrap_or_default();
            if s.len() > MAX_VALUE_LEN {
                return Err(error(format!("kv: value longer than {MAX_VALUE_LEN} bytes")));
            }
            return Ok(Value::Str(s));
        }
        Err(error(format!("kv: values are strings, numbers or bools, not {}", v.type_name())))
    }

    fn into_dynamic(self) -> Dynamic {
        match self {
            Value::Bool(b) => b.into(),
            Value::Int(i) => i.into(),
            Value::Float(f) => f.into(),
            Value::Str(s) => s.into(),
        }
    }
}

/// The `kv` plugin.
pub struct Kv {
    store: Arc<redb::Database>,
}

/// Builds the plugin from `[plugins.kv]` (no keys yet).
pub fn build(table: &toml::Table, ctx: &PluginContext) -> Result<Box<dyn Plugin>, PluginError> {
    let _: KvConfig = parse_config("kv", table)?;
    let txn = ctx.store.begin_write().map_err(|e| PluginError::Setup { plugin: "kv", message: e.to_string() })?;
    txn.open_table(TABLE).map_err(|e| PluginError::Setup { plugin: "kv", message: e.to_string() })?;
    txn.commit().map_err(|e| PluginError::Setup { plugin: "kv", message: e.to_string() })?;
    Ok(Box::new(Kv { store: ctx.store.clone() }))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn check_key(key: &str) -> Result<(), Box<EvalAltResult>> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(error(format!("kv: keys are 1 to {MAX_KEY_LEN} bytes")));
    }
    Ok(())
}

/// The expiry for a TTL starting now. Expiries are whole unix seconds (the stored format), so
/// one more second is added: a key then lives at least `ttl` seconds (at most `ttl` + 1),
/// where `now + ttl` alone let a key set late in a second vanish almost at once (ttl 1: a
/// few milliseconds).
fn ttl_expiry(ttl: i64) -> Result<u64, Box<EvalAltResult>> {
    if ttl <= 0 {
        return Err(error("kv: ttl_secs must be > 0"));
    }
    Ok(now().saturating_add(ttl as u64).saturating_add(1))
}

fn db_err(e: impl std::fmt::Display) -> Box<EvalAltResult> {
    error(format!("kv: store error: {e}"))
}

fn decode(bytes: &[u8]) -> Option<Entry> {
    let entry: Entry = serde_json::from_slice(bytes).ok()?;
    (entry.expires == 0 || entry.expires > now()).then_some(entry)
}

impl Kv {
    fn get(&self, key: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        check_key(key)?;
        let txn = self.store.begin_read().map_err(db_err)?;
        let table = txn.open_table(TABLE).map_err(db_err)?;
        let entry = table.get(key).map_err(db_err)?.and_then(|v| decode(v.value()));
        Ok(entry.map_or(Dynamic::UNIT, |e| e.value.into_dynamic()))
    }

    fn set(&self, key: &str, value: Dynamic, expires: u64) -> Result<(), Box<EvalAltResult>> {
        check_key(key)?;
        let entry = Entry { value: Value::from_dynamic(&value)?, expires };
        let bytes = serde_json::to_vec(&entry).map_err(db_err)?;
        let txn = self.store.begin_write().map_err(db_err)?;
        txn.open_table(TABLE).map_err(db_err)?.insert(key, bytes.as_slice()).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Read-modify-write in one write transaction: redb serialises writers, so concurrent
    /// increments never lose a count.
    fn incr(&self, key: &str, ttl: Option<i64>) -> Result<i64, Box<EvalAltResult>> {
        check_key(key)?;
        let new_expiry = ttl.map(ttl_expiry).transpose()?.unwrap_or(0);
        let txn = self.store.begin_write().map_err(db_err)?;
        let next = {
            let mut table = txn.open_table(TABLE).map_err(db_err)?;
            let current = table.get(key).map_err(db_err)?.and_then(|v| decode(v.value()));
            let (count, expires) = match current {
                Some(Entry { value: Value::Int(n), expires }) => (n.saturating_add(1), expires),
                Some(Entry { value, .. }) => {
                    return Err(error(format!("kv::incr({key:?}): value {value:?} is not an integer")))
                }
                None => (1, new_expiry),
            };
            let bytes = serde_json::to_vec(&Entry { value: Value::Int(count), expires }).map_err(db_err)?;
            table.insert(key, bytes.as_slice()).map_err(db_err)?;
            count
        };
        txn.commit().map_err(db_err)?;
        Ok(next)
    }

    fn delete(&self, key: &str) -> Result<bool, Box<EvalAltResult>> {
        check_key(key)?;
        let txn = self.store.begin_write().map_err(db_err)?;
        let existed = {
            let mut table = txn.open_table(TABLE).map_err(db_err)?;
            let removed = table.remove(key).map_err(db_err)?;
            removed.is_some_and(|v| decode(v.value()).is_some())
        };
        txn.commit().map_err(db_err)?;
        Ok(existed)
    }
}

impl Plugin for Kv {
    fn name(&self) -> &'static str {
        "kv"
    }

    fn module(&self) -> Module {
        let mut module = Module::new();
        let kv = Arc::new(Kv { store: self.store.clone() });
        let k = kv.clone();
        module.set_native_fn("get", move |key: &str| k.get(key));
        let k = kv.clone();
        module.set_native_fn("set", move |key: &str, value: Dynamic| k.set(key, value, 0));
        let k = kv.clone();
        module.set_native_fn("set", move |key: &str, value: Dynamic, ttl: i64| k.set(key, value, ttl_expiry(ttl)?));
        let k = kv.clone();
        module.set_native_fn("incr", move |key: &str| k.incr(key, None));
        let k = kv.clone();
        module.set_native_fn("incr", move |key: &str, ttl: i64| k.incr(key, Some(ttl)));
        let k = kv;
        module.set_native_fn("delete", move |key: &str| k.delete(key));
        module
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Arc<redb::Database> {
        Arc::new(redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap())
    }

    /// A kv plugin on an empty in-memory store, its table created as `build` does.
    fn fresh_kv() -> Kv {
        let kv = Kv { store: store() };
        let txn = kv.store.begin_write().unwrap();
        txn.open_table(TABLE).unwrap();
        txn.commit().unwrap();
        kv
    }

    fn engine(kv: &Kv) -> rhai::Engine {
        let mut engine = rhai::Engine::new();
        engine.register_static_module("kv", kv.module().into());
        engine
    }

    #[test]
    fn set_get_incr_delete() {
        let kv = fresh_kv();
        let engine = engine(&kv);
        let out: i64 = engine.eval(r#"kv::set("a", 5); kv::incr("a"); kv::incr("a") + 0"#).unwrap();
        assert_eq!(out, 7);
        let s: String = engine.eval(r#"kv::set("s", "x"); kv::get("s")"#).unwrap();
        assert_eq!(s, "x");
        let b: bool = engine.eval(r#"kv::set("b", true); kv::get("b")"#).unwrap();
        assert!(b);
        let missing: bool = engine.eval(r#"kv::get("nope") == ()"#).unwrap();
        assert!(missing);
        let deleted: bool = engine.eval(r#"kv::delete("s")"#).unwrap();
        assert!(deleted);
        assert!(engine.eval::<Dynamic>(r#"kv::incr("s2x"); kv::set("t", "str"); kv::incr("t")"#).is_err());
        assert!(engine.eval::<Dynamic>(r#"kv::set("m", #{a: 1})"#).is_err());
    }

    #[test]
    fn a_key_lives_at_least_its_ttl() {
        // Read one whole second after it was set (the store's clock is in whole seconds), a
        // key with a TTL of 1 must still be there: its expiry must lie past `set + 1`.
        let set_at = now();
        assert!(ttl_expiry(1).unwrap() > set_at + 1);
        assert!(ttl_expiry(0).is_err());
    }

    #[test]
    fn expired_keys_vanish() {
        let kv = fresh_kv();
        // An entry that expired a second ago reads as missing.
        let bytes = serde_json::to_vec(&Entry { value: Value::Int(3), expires: now() - 1 }).unwrap();
        let txn = kv.store.begin_write().unwrap();
        txn.open_table(TABLE).unwrap().insert("old", bytes.as_slice()).unwrap();
        txn.commit().unwrap();
        assert!(kv.get("old").unwrap().is_unit());
        assert_eq!(kv.incr("old", Some(60)).unwrap(), 1);
    }
}
