//! `mailflow oauth2 authorize --account NAME`: asks the user's consent for an account with an
//! `[accounts.oauth2]` table and stores the refresh token (in the state store, or through a
//! hand-over file when the daemon runs and holds the store; the account then resumes by
//! itself).

use std::path::Path;

use crate::config::LoadedConfig;
use crate::oauth2::authorize::authorize;
use crate::oauth2::store::save_from_cli;

/// Returns the process exit code.
pub fn run(config: Option<&Path>, account: &str) -> i32 {
    let loaded = match LoadedConfig::load(config) {
        Ok(loaded) => loaded,
        Err(e) => {
            crate::errln!("{e}");
            return 1;
        }
    };
    let Some(found) = loaded.config.accounts.iter().find(|a| a.name == account) else {
        crate::errln!("no [[accounts]] named {account:?} in the config");
        return 1;
    };
    let Some(oauth2) = &found.oauth2 else {
        crate::errln!("account {account:?} has no [accounts.oauth2] table (a password_command gives its tokens)");
        return 1;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            crate::errln!("cannot start the runtime: {e}");
            return 1;
        }
    };
    let mut say = |line: &str| crate::outln!("{line}");
    let tokens = match runtime.block_on(authorize(oauth2, &mut say)) {
        Ok(tokens) => tokens,
        Err(e) => {
            crate::errln!("account {account:?}: not authorized: {e}");
            return 1;
        }
    };
    match save_from_cli(&loaded.config.state.dir, account, &tokens) {
        Ok(where_) => {
            crate::outln!("account {account:?} is authorized; the refresh token is {where_}");
            0
        }
        Err(e) => {
            crate::errln!("account {account:?}: cannot store the refresh token: {e}");
            1
        }
    }
}
