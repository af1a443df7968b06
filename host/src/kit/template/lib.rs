// {{name}}: a simrelay adapter plugin.
//
// A plugin is a state machine: the host hands it an input (here a webhook) and it answers
// with outputs (a reply, events for the instances downstream of it, deliveries for the host
// to make). It never opens a socket; its state lives in the key-value store the host gives
// each instance.

use simrelay_sdk::serde_json::{Value, json};
use simrelay_sdk::{
    Adapter, CallContext, Capability, Descriptor, Effects, Event, HttpReply, HttpRequest,
    MessageKind, ReceivedMessage, SettingSpec, Stores, WebhookOutcome,
};

/// Echoes every webhook with how many it has seen, and passes on the messages sent to it
/// as `{"from": ..., "to": ..., "text": ...}`.
pub struct {{Type}};

impl Adapter for {{Type}} {
    fn describe() -> Descriptor {
        Descriptor {
            capabilities: vec![Capability::Webhook],
            settings: vec![SettingSpec::optional(
                "greeting",
                "first word of every reply (default \"echo\")",
            )],
            ..Descriptor::new("{{name}}", env!("CARGO_PKG_VERSION"))
        }
    }

    fn on_webhook(
        ctx: &CallContext,
        kv: &Stores,
        request: HttpRequest,
    ) -> Result<WebhookOutcome, String> {
        // The host commits this write together with the reply and the events, or none of them.
        let count = kv.increment("webhooks", 1)?;
        let body: Value = simrelay_sdk::serde_json::from_slice(&request.body).unwrap_or_default();
        let mut events = Vec::new();
        if let Some(text) = body["text"].as_str() {
            events.push(Event::MessageReceived(ReceivedMessage {
                // The same webhook re-sent must carry the same id; a real provider's own
                // message id belongs here.
                id: format!("{}-{count}", ctx.instance),
                sender: body["from"].as_str().unwrap_or_default().into(),
                recipient: body["to"].as_str().unwrap_or_default().into(),
                text: text.into(),
                kind: MessageKind::Sms,
                received_at_ms: Some(ctx.now_ms),
                device: None,
                port: None,
                iccid: None,
                imsi: None,
                code: None,
            }));
        }
        let greeting = ctx.setting("greeting").unwrap_or("echo");
        let reply = json!({ greeting: body, "count": count });
        Ok(WebhookOutcome {
            reply: HttpReply::json(200, reply.to_string()),
            effects: Effects {
                events,
                deliveries: Vec::new(),
            },
        })
    }
}

simrelay_sdk::export_adapter!({{Type}});

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(body: &str) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            path: "/hook".into(),
            query: String::new(),
            params: Vec::new(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn echoes_counts_and_passes_messages_on() {
        let kv = Stores::memory();
        let ctx = CallContext::for_tests(&[]);
        let sms = r#"{"from":"Bank","to":"+100","text":"code 1234"}"#;
        let first = {{Type}}::on_webhook(&ctx, &kv, webhook(sms)).unwrap();
        assert_eq!(first.reply.status, 200);
        let reply: Value = simrelay_sdk::serde_json::from_slice(&first.reply.body).unwrap();
        assert_eq!(
            reply,
            json!({ "echo": { "from": "Bank", "to": "+100", "text": "code 1234" }, "count": 1 })
        );
        let [Event::MessageReceived(message)] = &first.effects.events[..] else {
            panic!("one message expected");
        };
        assert_eq!(message.text, "code 1234");

        let second = {{Type}}::on_webhook(&ctx, &kv, webhook("{}")).unwrap();
        assert!(second.effects.events.is_empty());
        let reply: Value = simrelay_sdk::serde_json::from_slice(&second.reply.body).unwrap();
        assert_eq!(reply["count"], 2);
    }
}
