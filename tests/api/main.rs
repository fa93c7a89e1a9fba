//! Integration tests: each starts the real server on `127.0.0.1:0` with its own data
//! directory and talks to it over real gRPC and HTTP.

mod admin_auth;
mod algorithms;
mod at_rest;
mod audit;
mod bad_requests;
mod bad_tokens;
mod bench;
mod binary;
mod callers;
mod callers_mtls;
mod clients;
mod crash;
mod file_modes;
mod grpcurl;
mod helpers;
mod jwks_http;
mod keys_command;
mod lifecycle;
mod limits;
mod listener_limits;
mod log_hygiene;
mod metrics;
mod persistence_and_rotation;
mod pki;
mod policy;
mod policy_command;
mod postgres;
mod replicas;
mod round_trip;
mod shredding;
mod startup_refusals;
mod tls;
mod tools;
mod write_failures;
