//! Guides: the README's long-form sections, with every Rust example
//! compiled as a doc test. They are cut out of `README.md` when the crate
//! is built, so the README and these pages never disagree.

#[doc = include_str!(concat!(env!("OUT_DIR"), "/tour.md"))]
pub mod tour {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/keep_alive.md"))]
pub mod keep_alive {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/fencing.md"))]
pub mod fencing {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/several_resources.md"))]
pub mod several_resources {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/primitives.md"))]
pub mod primitives {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/visibility.md"))]
pub mod visibility {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guarantees.md"))]
pub mod guarantees {}

// Its TLS and cluster examples need those features.
#[cfg_attr(
    all(
        feature = "cluster",
        any(feature = "tls-rustls", feature = "tls-native-tls")
    ),
    doc = include_str!(concat!(env!("OUT_DIR"), "/operations.md"))
)]
#[cfg_attr(
    not(all(
        feature = "cluster",
        any(feature = "tls-rustls", feature = "tls-native-tls")
    )),
    doc = "Operations: nodes healing, ACL users, TLS, Redis Cluster nodes, \
           persistence and failover. Its examples need the features `cluster` \
           and `tls-rustls`; build the docs with them (docs.rs does) to read \
           it here, or read the README's Operations section."
)]
pub mod operations {}
