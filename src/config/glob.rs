//! Address patterns for routes and policy: `*@example.com`, `invoices@example.com`,
//! `*`. `*` stands for any run of characters and `?` for one; letters match in any case
//! (`Billing@Example.COM` is `billing@example.com` to a pattern).

use std::fmt;

use wildmatch::WildMatch;

/// One address pattern, checked when the configuration is loaded.
#[derive(Clone)]
pub struct AddressGlob {
    text: String,
    pattern: WildMatch,
}

impl AddressGlob {
    /// Parse a pattern; the error says what is wrong and how to write it.
    pub fn parse(text: &str) -> Result<AddressGlob, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty pattern matches nothing; write `*` for every address".into());
        }
        if let Some(c) = text
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ','))
        {
            return Err(format!(
                "`{text}` contains {c:?}; a pattern is a bare address such as `*@example.com`"
            ));
        }
        if text != "*" && !text.contains('@') {
            return Err(format!(
                "`{text}` has no `@`; write `*@{text}` for every address of a domain"
            ));
        }
        Ok(AddressGlob {
            text: text.to_owned(),
            pattern: WildMatch::new_case_insensitive(text),
        })
    }

    /// Whether `address` (`local@domain`) matches.
    pub fn matches(&self, address: &str) -> bool {
        self.pattern.matches(address)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for AddressGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for AddressGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for AddressGlob {
    fn eq(&self, other: &AddressGlob) -> bool {
        self.text == other.text
    }
}

/// Whether any of `globs` matches `address`.
pub fn any_matches(globs: &[AddressGlob], address: &str) -> bool {
    globs.iter().any(|g| g.matches(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_in_any_case() {
        let domain = AddressGlob::parse("*@billing.example.com").unwrap();
        assert!(domain.matches("invoices@billing.example.com"));
        assert!(domain.matches("Invoices@Billing.Example.COM"));
        assert!(!domain.matches("invoices@example.com"));
        assert!(!domain.matches("invoices@billing.example.com.evil.test"));
        let one = AddressGlob::parse("invoices@example.com").unwrap();
        assert!(one.matches("INVOICES@example.com"));
        assert!(!one.matches("invoices2@example.com"));
        let single = AddressGlob::parse("app?@example.com").unwrap();
        assert!(single.matches("app1@example.com"));
        assert!(!single.matches("app12@example.com"));
        assert!(
            AddressGlob::parse("*")
                .unwrap()
                .matches("anyone@anywhere.test")
        );
    }

    #[test]
    fn mistakes_are_explained() {
        for (text, says) in [
            ("", "empty pattern"),
            ("example.com", "write `*@example.com`"),
            ("<a@example.com>", "bare address"),
            ("a@example.com b@example.com", "bare address"),
        ] {
            let error = AddressGlob::parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
