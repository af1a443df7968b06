//! Webhook routes: path patterns with `{name}` captures, matched segment by segment.

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Capture(String),
}

#[derive(Debug, Clone)]
pub struct Pattern {
    segments: Vec<Segment>,
}

impl Pattern {
    /// The error says what is wrong with the pattern, naming it.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("route path `{pattern}` must start with `/`"));
        };
        let segments = rest
            .split('/')
            .map(
                |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some("") => Err(format!("route path `{pattern}` has an unnamed capture")),
                    Some(name) => Ok(Segment::Capture(name.to_string())),
                    None if segment.contains(['{', '}']) => Err(format!(
                        "route path `{pattern}`: a capture must be a whole segment"
                    )),
                    None => Ok(Segment::Literal(segment.to_string())),
                },
            )
            .collect::<Result<_, String>>()?;
        Ok(Pattern { segments })
    }

    /// The captures, when `path` matches.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut captures = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Capture(_) if part.is_empty() => return None,
                Segment::Capture(name) => captures.push((name.clone(), part.to_string())),
            }
        }
        Some(captures)
    }
}

/// A configured route.
pub struct Route {
    pub pattern: Pattern,
    pub method: Option<String>,
    pub instance: String,
}

/// The routes in configuration order; the first match wins.
pub struct Router {
    routes: Vec<Route>,
}

pub struct Matched<'a> {
    pub instance: &'a str,
    pub params: Vec<(String, String)>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Self {
        Router { routes }
    }

    pub fn find(&self, method: &str, path: &str) -> Option<Matched<'_>> {
        self.routes.iter().find_map(|route| {
            if route
                .method
                .as_deref()
                .is_some_and(|m| !m.eq_ignore_ascii_case(method))
            {
                return None;
            }
            route.pattern.matches(path).map(|params| Matched {
                instance: &route.instance,
                params,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_named_segments() {
        let pattern = Pattern::parse("/api/{key}/webhook").unwrap();
        assert_eq!(
            pattern.matches("/api/secret/webhook"),
            Some(vec![("key".into(), "secret".into())])
        );
        assert_eq!(pattern.matches("/api//webhook"), None);
        assert_eq!(pattern.matches("/api/secret/other"), None);
        assert_eq!(pattern.matches("/api/secret/webhook/more"), None);
    }

    #[test]
    fn rejects_malformed_patterns() {
        assert!(Pattern::parse("api/x").is_err());
        assert!(Pattern::parse("/api/{}").is_err());
        assert!(Pattern::parse("/api/x{key}").is_err());
    }

    #[test]
    fn honours_methods_and_order() {
        let route = |path: &str, method: Option<&str>, instance: &str| Route {
            pattern: Pattern::parse(path).unwrap(),
            method: method.map(str::to_string),
            instance: instance.into(),
        };
        let router = Router::new(vec![
            route("/hook", Some("POST"), "posts"),
            route("/hook", None, "any"),
        ]);
        assert_eq!(router.find("post", "/hook").unwrap().instance, "posts");
        assert_eq!(router.find("GET", "/hook").unwrap().instance, "any");
        assert!(router.find("GET", "/nothing").is_none());
    }
}
