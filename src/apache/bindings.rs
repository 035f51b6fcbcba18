//! bindgen output for the httpd/APR items the Apache layer uses (the
//! allowlist is in build.rs).

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unnecessary_transmutes,
    clippy::all,
    clippy::pedantic
)]

include!(concat!(env!("OUT_DIR"), "/httpd_bindings.rs"));

/// Structs the Rust side only handles by pointer (left out of bindgen's
/// output in build.rs): unsized-in-practice, never constructed.
macro_rules! opaque_structs {
    ($($name:ident),* $(,)?) => {
        $(
            #[repr(C)]
            pub struct $name {
                _private: [u8; 0],
                _not_send_sync_unpin: ::core::marker::PhantomData<(*mut u8, ::core::marker::PhantomPinned)>,
            }
        )*
    };
}

opaque_structs!(
    conn_rec,
    process_rec,
    server_addr_rec,
    ap_conf_vector_t,
    ap_filter_t,
    ap_method_list_t,
    apr_array_header_t,
    apr_bucket_brigade,
    apr_file_t,
    apr_thread_mutex_t,
    htaccess_result,
);
