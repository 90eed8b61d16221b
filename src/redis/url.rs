//! Redis URLs: parsing into a client, and the redacted form that is the only one ever shown.

use crate::ConfigError;

/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`.
///
/// Deliberately conservative, because its input may be malformed (it also builds the
/// `ConfigError` for a URL that does not parse): the user-info ends at the LAST `@` (an
/// unencoded password may hold `/`, `?`, `#` or `@`), a URL without `://` is redacted after
/// its first `:` (`redis:/:pw@host`, `redis//user:pw@host`), and `pass`/`password` query
/// parameters (how `unix://` and `redis+unix://` URLs carry credentials) are redacted too.
/// Redacting too much beats leaking.
pub(crate) fn redact_url(url: &str) -> String {
    let start = match url.find("://") {
        Some(i) => i + 3,
        None => url.find(':').map_or(0, |i| i + 1),
    };
    let (head, rest) = url.split_at(start);
    let (userinfo, tail) = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let redacted = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***@"),
                None if userinfo.is_empty() => "@".to_owned(),
                // A lone userinfo part is the password for redis:// URLs without a user name.
                None => "***@".to_owned(),
            };
            (redacted, &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{head}{userinfo}{tail}")
}

/// Whether `url` asks for TLS (`rediss://`).
pub(crate) fn is_tls(url: &str) -> bool {
    url.get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
}

/// Parses `url` into connection settings, or a `ConfigError` naming `setting` that shows
/// the URL redacted.
pub(crate) fn parse(
    setting: &'static str,
    url: &str,
) -> Result<redis::ConnectionInfo, ConfigError> {
    if is_tls(url) && !cfg!(feature = "tls") {
        return Err(ConfigError::new(
            setting,
            format!(
                "`{}` asks for TLS, which needs the crate feature `tls`",
                redact_url(url)
            ),
        ));
    }
    redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| {
        ConfigError::new(
            setting,
            format!(
                "`{}` is not a Redis URL ({}); expected redis[s]://[user[:password]@]host[:port][/db]",
                redact_url(url),
                e.category()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://user:s3cr3t@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cr3t@host/"), "redis://:***@host/");
        assert_eq!(redact_url("rediss://s3cr3t@host"), "rediss://***@host");
        assert_eq!(
            redact_url("rediss://default:s3cr3t@host:6380"),
            "rediss://default:***@host:6380"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("not a url"), "not a url");
        assert!(!redact_url("redis://u:p@ss@host/").contains("p@ss"));
        // Malformed URLs and query-string credentials (found by tests/cache_l1.rs).
        assert_eq!(
            redact_url("redis:/:s3cr3t@host:6379/"),
            "redis:/:***@host:6379/"
        );
        assert_eq!(
            redact_url("redis//user:s3cr3t@host"),
            "redis//user:***@host"
        );
        assert_eq!(redact_url("redis://:pa/ss@host/0"), "redis://:***@host/0");
        assert_eq!(
            redact_url("unix:///tmp/r.sock?db=1&pass=s3cr3t&user=me"),
            "unix:///tmp/r.sock?db=1&pass=***&user=me"
        );
        assert_eq!(redact_url("redis://@host/"), "redis://@host/");
    }

    #[test]
    fn parse_errors_name_the_setting_and_hide_the_password() {
        let err = parse("redis_url", "http://u:s3cr3t@host/").unwrap_err();
        assert_eq!(err.setting(), "redis_url");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        assert!(parse("redis_url", "redis://127.0.0.1:6379/0").is_ok());
        assert!(is_tls("REDISS://host") && !is_tls("redis://host"));
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_urls_need_the_feature() {
        let err = parse("redis_url", "rediss://u:s3cr3t@host/").unwrap_err();
        assert!(
            err.reason().contains("`tls`") && !err.reason().contains("s3cr3t"),
            "{err}"
        );
    }
}
