//! Keeps secrets out of logs and error messages.

/// Replaces every known secret value in text that may reach a log or a client.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

/// Secrets shorter than this would blank out ordinary words.
const MIN_SECRET_LEN: usize = 4;

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|secret| secret.len() >= MIN_SECRET_LEN)
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        Redactor { secrets }
    }

    pub fn redact(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_string(), |text, secret| {
            text.replace(secret, "[redacted]")
        })
    }
}

/// Setting names treated as secret even when a plugin forgets to say so.
pub fn looks_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["key", "token", "pass", "secret"]
        .iter()
        .any(|word| name.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_secret_longest_first() {
        let redactor = Redactor::new(["abcd".to_string(), "abcdef".to_string(), "x".to_string()]);
        assert_eq!(
            redactor.redact("k=abcdef&j=abcd&x"),
            "k=[redacted]&j=[redacted]&x"
        );
    }

    #[test]
    fn recognises_secret_setting_names() {
        assert!(looks_secret("api_key"));
        assert!(looks_secret("Password"));
        assert!(!looks_secret("base_url"));
    }
}
