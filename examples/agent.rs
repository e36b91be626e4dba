//! An agent paying for tools through a paygate gateway: it calls a tool until the credits run
//! out, then pays through the client's `on_payment_required` hook (an operator top-up when
//! `--admin-key` is given, else a Stripe Checkout link for a person) and goes on.
//!
//! ```text
//! cargo run --example gateway                      # prints PAYGATE_KEY and PAYGATE_ADMIN_KEY
//! cargo run --features client --example agent -- --url http://127.0.0.1:3402 --key "$PAYGATE_KEY"
//!     [--tool echo] [--calls 200] [--admin-key "$PAYGATE_ADMIN_KEY" --top-up 50] [--package starter]
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use paygate_mcp::client::{ClientError, Credentials, PayGateClient, PaymentDecision};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    about = "Calls a paid tool through a paygate gateway until the credits run out, then pays"
)]
struct Args {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:3402")]
    url: String,
    /// The API key that pays.
    #[arg(long)]
    key: String,
    /// The tool to call.
    #[arg(long, default_value = "echo")]
    tool: String,
    /// How many calls to make at most.
    #[arg(long, default_value_t = 200)]
    calls: u32,
    /// Pay as the operator would: top up through the admin API with this admin key.
    #[arg(long)]
    admin_key: Option<String>,
    /// Credits each top-up adds.
    #[arg(long, default_value_t = 50)]
    top_up: u64,
    /// Without an admin key: the credit package to buy through Stripe Checkout.
    #[arg(long, default_value = "starter")]
    package: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), ClientError> {
    let (url, key, admin_key, top_up, package) = (
        args.url.clone(),
        args.key.clone(),
        args.admin_key.clone(),
        args.top_up,
        args.package.clone(),
    );
    let client = PayGateClient::builder(&args.url, Credentials::ApiKey(args.key.clone()))
        .wait_on_rate_limit(3, Duration::from_secs(60))
        .on_payment_required(move |needed| {
            let (url, key, admin_key, package) =
                (url.clone(), key.clone(), admin_key.clone(), package.clone());
            Box::pin(async move {
                eprintln!(
                    "{}: {} credits needed ({}), {:?} left",
                    needed.tool, needed.credits_required, needed.reason, needed.remaining
                );
                // Credits mend only a short balance: a quota or a spending limit stays
                // reached whatever is bought.
                if needed.reason != "insufficient_credits" {
                    eprintln!("buying credits would not help; stopping");
                    return PaymentDecision::GiveUp;
                }
                // Enough for the call that was refused, at least.
                let top_up = top_up.max(needed.credits_required);
                pay(&url, &key, admin_key.as_deref(), top_up, &package).await
            })
        })
        .build()?;
    client.initialize().await?;
    for tool in client.list_tools().await? {
        println!(
            "tool {} costs {:?} credits",
            tool.name, tool.credits_per_call
        );
    }
    for n in 1..=args.calls {
        match client
            .call_tool(&args.tool, json!({"message": format!("call {n}")}))
            .await
        {
            Ok(_) => println!(
                "call {n}: ok, {:?} credits left",
                client.last_call().credits_remaining
            ),
            Err(ClientError::PaymentRequired { .. }) => {
                println!("call {n}: out of credits and not paid; stopping");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Buys credits: an operator's top-up when there is an admin key (then the call is retried),
/// else a Stripe Checkout link for a person to open (and the agent stops).
async fn pay(
    url: &str,
    key: &str,
    admin_key: Option<&str>,
    credits: u64,
    package: &str,
) -> PaymentDecision {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(http) => http,
        Err(_) => return PaymentDecision::GiveUp,
    };
    match admin_key {
        Some(admin) => {
            let sent = http
                .post(format!("{url}/topup"))
                .header("x-admin-key", admin)
                .json(&json!({"key": key, "credits": credits}))
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    eprintln!("topped up {credits} credits");
                    PaymentDecision::Retry
                }
                _ => PaymentDecision::GiveUp,
            }
        }
        None => {
            let sent = http
                .post(format!("{url}/checkout"))
                .header("x-api-key", key)
                .json(&json!({"package": package}))
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    let doc: serde_json::Value = resp.json().await.unwrap_or_default();
                    eprintln!("buy credits here, then run again: {}", doc["url"]);
                }
                _ => eprintln!("no way to pay here: give --admin-key, or sell credits with Stripe"),
            }
            PaymentDecision::GiveUp
        }
    }
}
