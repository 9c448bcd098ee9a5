//! What grpcurl and load balancers see: reflection (v1 and v1alpha) and health.

use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::app::spawn_app;

/// The services reflection v1 lists at `url`, asked without a token.
pub async fn list_services_v1(url: &str) -> Vec<String> {
    use tonic_reflection::pb::v1 as r1;
    let channel = benchq::client::endpoint(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = r1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let reply = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected reply {reply:?}");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test]
async fn reflection_lists_the_coordinator_in_v1_and_v1alpha() {
    use tonic_reflection::pb::v1 as r1;
    use tonic_reflection::pb::v1alpha as r1a;
    let app = spawn_app().await;
    let channel = benchq::client::endpoint(&app.url())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let names = list_services_v1(&app.url()).await;
    let mut v1 = r1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    assert!(
        names.contains(&"benchq.v1.Coordinator".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    // The file holding the service resolves too (what grpcurl `describe` needs).
    let req = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            r1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "benchq.v1.Coordinator".into(),
            ),
        ),
    };
    let reply = v1
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        reply.message_response,
        Some(r1::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));

    let mut v1a = r1a::server_reflection_client::ServerReflectionClient::new(channel);
    let req = r1a::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            r1a::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let reply = v1a
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    let Some(r1a::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected reply {reply:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "benchq.v1.Coordinator")
    );
}

#[tokio::test]
async fn health_answers_serving() {
    let app = spawn_app().await;
    let channel = benchq::client::endpoint(&app.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "benchq.v1.Coordinator"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
}
