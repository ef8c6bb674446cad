use super::*;
use crate::config::load_str;

fn account(extra: &str) -> Result<AccountConfig, String> {
    let text = format!("[[accounts]]\nname = \"a\"\nusername = \"me@example.org\"\n{extra}");
    load_str(&text, "m.toml").map(|c| c.accounts[0].clone()).map_err(|e| e.to_string())
}

#[test]
fn gmail_preset_fills_host_port_tls_auth_endpoints_and_folders() {
    let a = account(
        "protocol = \"imap\"\nprovider = \"gmail\"\n[accounts.oauth2]\nclient_id = \"id\"\nclient_secret = \"s\"\n",
    )
    .unwrap();
    assert_eq!((a.host.as_str(), a.port, a.tls), ("imap.gmail.com", Some(993), AccountTls::Implicit));
    assert_eq!(a.auth_method(), AuthMethod::Xoauth2);
    let o = a.oauth2.as_ref().unwrap();
    assert_eq!(o.token_url, "https://oauth2.googleapis.com/token");
    assert_eq!(o.scope, "https://mail.google.com/");
    assert_eq!(folder_alias(&a.folders, "Junk"), "[Gmail]/Spam");
    assert_eq!(folder_alias(&a.folders, "Lists/rust"), "Lists/rust");
    // An app password: plain login.
    let p = account("protocol = \"pop3\"\nprovider = \"gmail\"\npassword = \"app\"\n").unwrap();
    assert_eq!((p.host.as_str(), p.port, p.auth_method()), ("pop.gmail.com", Some(995), AuthMethod::Password));
}

#[test]
fn outlook_is_oauth_only_and_the_file_wins_over_the_preset() {
    let a = account(
        "protocol = \"imap\"\nprovider = \"outlook\"\nhost = \"imap.example\"\n[folders]\nJunk = \"Spam\"\n[accounts.oauth2]\nclient_id = \"id\"\n",
    );
    // `[folders]` after `[[accounts]]` is a top-level table: an unknown key.
    assert!(a.is_err());
    let a = account("protocol = \"imap\"\nprovider = \"outlook\"\nhost = \"imap.example\"\nfolders = { Junk = \"Spam\" }\n[accounts.oauth2]\nclient_id = \"id\"\n").unwrap();
    assert_eq!(a.host, "imap.example");
    assert_eq!(a.auth_method(), AuthMethod::Xoauth2);
    assert_eq!(folder_alias(&a.folders, "Junk"), "Spam");
    assert_eq!(folder_alias(&a.folders, "Trash"), "Deleted Items");
    assert!(a.oauth2.as_ref().unwrap().device_url.ends_with("/devicecode"));
}

#[test]
fn login_settings_must_agree() {
    let base = "protocol = \"imap\"\nhost = \"h\"\n";
    assert!(account(&format!("{base}password = \"p\"\n")).is_ok());
    let none = account(base).unwrap_err();
    assert!(none.contains("exactly one of password and password_command"), "{none}");
    let token_cmd = account(&format!("{base}auth = \"oauthbearer\"\npassword_command = \"get-token\"\n")).unwrap();
    assert_eq!(token_cmd.auth_method(), AuthMethod::Oauthbearer);
    let both =
        account(&format!("{base}password = \"p\"\n[accounts.oauth2]\ntoken_url = \"https://t\"\nclient_id = \"c\"\n"));
    assert!(both.unwrap_err().contains("cannot be set with [accounts.oauth2]"));
    let password_auth = account(&format!(
        "{base}auth = \"password\"\n[accounts.oauth2]\ntoken_url = \"https://t\"\nclient_id = \"c\"\n"
    ));
    assert!(password_auth.unwrap_err().contains(r#"auth = "xoauth2""#));
    let no_url = account(&format!("{base}[accounts.oauth2]\nclient_id = \"c\"\n"));
    assert!(no_url.unwrap_err().contains("needs token_url and client_id"));
    let implied = account(&format!("{base}[accounts.oauth2]\ntoken_url = \"https://t\"\nclient_id = \"c\"\n")).unwrap();
    assert_eq!(implied.auth_method(), AuthMethod::Xoauth2);
    let no_host = account("protocol = \"imap\"\npassword = \"p\"\n").unwrap_err();
    assert!(no_host.contains("host is missing"), "{no_host}");
    let icloud_pop = account("protocol = \"pop3\"\nprovider = \"icloud\"\npassword = \"p\"\n").unwrap_err();
    assert!(icloud_pop.contains("no Pop3 server"), "{icloud_pop}");
    assert!(account(&format!("{base}auth = \"kerberos\"\npassword = \"p\"\n")).is_err());
}

#[test]
fn the_relay_account_must_log_in_with_oauth2_over_smtp() {
    let account =
        "[[accounts]]\nname = \"g\"\nprotocol = \"imap\"\nprovider = \"gmail\"\nusername = \"me@gmail.com\"\n";
    let oauth = "[accounts.oauth2]\nclient_id = \"c\"\n";
    let check = |outbound: &str, rest: &str| load_str(&format!("[outbound]\n{outbound}\n{account}{rest}"), "m.toml");
    let relay = "relay = \"smtp://smtp.gmail.com:587\"\nstarttls = \"required\"\nrelay_account = \"g\"";
    assert!(check(relay, oauth).is_ok());
    let password = check(relay, "password = \"app\"\n").unwrap_err().to_string();
    assert!(password.contains("does not log in with OAuth2"), "{password}");
    let unknown = check(&relay.replace("= \"g\"", "= \"x\""), oauth).unwrap_err().to_string();
    assert!(unknown.contains("no [[accounts]] has that name"), "{unknown}");
    assert!(check(&relay.replace("smtp://", "smtps://"), oauth).is_ok());
    let inline = check(&relay.replace("smtp://", "smtp://me:pw@"), oauth).unwrap_err().to_string();
    assert!(inline.contains("a relay without a password"), "{inline}");
}
