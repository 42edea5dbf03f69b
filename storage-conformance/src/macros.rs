//! One macro per tier, expanding into a module of individually named `#[test]`s.

/// Expands a list of checks into a module of `#[test]`s. Not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite {
    (
        $module:ident, $harness:expr, $tier:ident;
        plain: [$($pm:ident :: $pc:ident),* $(,)?];
        model: [$($mm:ident :: $mc:ident),* $(,)?];
    ) => {
        #[allow(unused_imports, clippy::all, clippy::pedantic)]
        mod $module {
            use super::*;

            /// Fails to compile, naming the missing tier, when the harness's store lacks it
            /// (checked in every build, not only under `cfg(test)`).
            #[allow(dead_code)]
            fn the_store_implements_the_suites_tier() {
                fn has_tier<H: $crate::$tier>(_: &H) {}
                has_tier(&$harness);
            }
            $(
                #[test]
                fn $pc() {
                    $crate::runner::run(
                        concat!(stringify!($module), "::", stringify!($pc)),
                        async {
                            let harness = $harness;
                            $crate::$pm::$pc(&harness).await
                        },
                    );
                }
            )*
            $(
                #[test]
                fn $mc() {
                    $crate::runner::run(
                        concat!(stringify!($module), "::", stringify!($mc)),
                        async {
                            let harness = $harness;
                            $crate::$mm::$mc(
                                &harness,
                                $crate::Regressions::file(concat!(
                                    env!("CARGO_MANIFEST_DIR"),
                                    "/proptest-regressions/",
                                    stringify!($module),
                                    "-",
                                    stringify!($mc),
                                    ".txt"
                                )),
                            )
                            .await
                        },
                    );
                }
            )*
        }
    };
}

/// The storage suite: `storage_suite!(MyHarness::new());` expands into the module
/// `kv_conformance` (the crate's own name is taken) with one `#[test]` per storage rule (name it yourself with
/// `storage_suite!(my_module, MyHarness::new())`).
///
/// The harness expression is evaluated once per test and must implement
/// [`StorageHarness`](crate::StorageHarness).
#[macro_export]
macro_rules! storage_suite {
    ($harness:expr) => {
        $crate::storage_suite!(kv_conformance, $harness);
    };
    ($module:ident, $harness:expr) => {
        $crate::__suite! {
            $module, $harness, StorageHarness;
            plain: [
                storage::capabilities_agree_with_tier_accessors,
                storage::get_of_missing_key_returns_none,
                storage::set_then_get_returns_the_value,
                storage::typed_values_round_trip,
                storage::set_overwrites_the_previous_value,
                storage::delete_of_missing_key_returns_false,
                storage::delete_of_existing_key_returns_true_and_removes_it,
                storage::has_reports_presence,
                storage::size_counts_entries,
                storage::clear_empties_the_store,
                storage::clear_leaves_other_namespaces_untouched,
                storage::keys_stream_in_ascending_byte_order,
                storage::values_and_entries_follow_key_order,
                storage::empty_store_streams_nothing,
                storage::invalid_keys_are_rejected_and_change_nothing,
                storage::hostile_keys_are_ordinary_keys,
                storage::edge_values_round_trip,
                storage::unencodable_values_are_refused_or_kept_exactly,
                storage::large_values_round_trip,
                storage::concurrent_writers_all_land,
                storage::corrupted_bytes_give_a_typed_error,
            ];
            model: [
                model::random_operation_sequences_match_a_btreemap_model,
            ];
        }
    };
}

/// The batch suite: `batch_suite!(MyHarness::new());` expands into the module
/// `batch_conformance`. Needs a [`BatchHarness`](crate::BatchHarness): invoking it for a
/// store without [`BatchStorage`](storage_core::BatchStorage) does not compile.
#[macro_export]
macro_rules! batch_suite {
    ($harness:expr) => {
        $crate::batch_suite!(batch_conformance, $harness);
    };
    ($module:ident, $harness:expr) => {
        $crate::__suite! {
            $module, $harness, BatchHarness;
            plain: [
                batch::capabilities_agree_with_tier_accessors,
                batch::get_many_returns_only_present_keys,
                batch::set_many_stores_every_entry,
                batch::delete_many_counts_existing_keys,
                batch::batch_applies_operations_in_order,
                batch::failed_batch_applies_nothing,
                batch::batch_with_an_unencodable_value_applies_nothing,
                batch::batch_over_the_declared_limit_is_refused,
                batch::concurrent_readers_never_see_half_a_batch,
            ];
            model: [
                model::random_batch_sequences_match_a_btreemap_model,
            ];
        }
    };
}

/// The queryable suite: `queryable_suite!(MyHarness::new());` expands into the module
/// `queryable_conformance`: the hand-written corpus, differential tests against the reference
/// evaluator, paging, counting, projection and the bad-query classes. Needs a
/// [`QueryableHarness`](crate::QueryableHarness).
#[macro_export]
macro_rules! queryable_suite {
    ($harness:expr) => {
        $crate::queryable_suite!(queryable_conformance, $harness);
    };
    ($module:ident, $harness:expr) => {
        $crate::__suite! {
            $module, $harness, QueryableHarness;
            plain: [
                query::capabilities_agree_with_tier_accessors,
                query::corpus_cases_return_the_expected_keys,
                query::limit_and_offset_page_the_ordered_results,
                query::count_ignores_limit_and_offset,
                query::find_one_returns_the_first_ordered_result,
                query::results_carry_values_and_projections,
                query::queries_see_writes_immediately,
                bad_input::bad_queries_give_invalid_query_or_the_reference_answer,
                bad_input::bad_pipelines_give_invalid_query_or_the_reference_answer,
            ];
            model: [
                query::random_queries_match_the_reference_evaluator,
                query::random_aggregates_match_the_reference_evaluator,
            ];
        }
    };
}

/// The indexed suite: `indexed_suite!(MyHarness::new());` expands into the module
/// `indexed_conformance`: index life cycle, uniqueness, identical answers with and without each
/// declared index kind, `explain` and index counters. Needs an
/// [`IndexedHarness`](crate::IndexedHarness); what `explain` should report comes from
/// [`Harness::expects_index_use`](crate::Harness::expects_index_use).
#[macro_export]
macro_rules! indexed_suite {
    ($harness:expr) => {
        $crate::indexed_suite!(indexed_conformance, $harness);
    };
    ($module:ident, $harness:expr) => {
        $crate::__suite! {
            $module, $harness, IndexedHarness;
            plain: [
                indexed::capabilities_agree_with_tier_accessors,
                indexed::creating_an_identical_index_twice_is_a_no_op,
                indexed::another_definition_under_a_taken_name_is_duplicate_key,
                indexed::drop_index_reports_whether_it_existed,
                indexed::undeclared_index_kinds_are_unsupported,
                indexed::a_bad_index_path_is_invalid_query,
                indexed::unique_index_rejects_conflicting_writes_and_changes_nothing,
                indexed::unique_index_over_conflicting_data_is_refused,
                indexed::results_are_identical_with_and_without_each_index,
                indexed::explain_reports_index_use,
                indexed::index_stats_move,
            ];
            model: [
                indexed::random_queries_match_the_reference_evaluator_with_indexes,
            ];
        }
    };
}

/// The transactional suite: `transactional_suite!(MyHarness::new());` expands into the module
/// `transactional_conformance`: commit, rollback, rollback on drop, savepoints (model-based),
/// read-only, time-out, retries, the reported isolation level, and the Hermitage anomaly tests
/// run at every declared isolation level. Needs a
/// [`TransactionalHarness`](crate::TransactionalHarness).
#[macro_export]
macro_rules! transactional_suite {
    ($harness:expr) => {
        $crate::transactional_suite!(transactional_conformance, $harness);
    };
    ($module:ident, $harness:expr) => {
        $crate::__suite! {
            $module, $harness, TransactionalHarness;
            plain: [
                transactional::capabilities_agree_with_tier_accessors,
                transactional::committed_writes_become_visible,
                transactional::a_transaction_sees_its_own_writes,
                transactional::invalid_keys_in_a_transaction_are_rejected,
                transactional::uncommitted_writes_are_invisible_to_others,
                transactional::rolled_back_writes_vanish,
                transactional::a_dropped_transaction_rolls_back,
                transactional::a_committed_transaction_cannot_be_reused,
                transactional::a_clear_in_a_transaction_applies_at_commit,
                transactional::savepoints_nest_and_rollback_to_undoes_later_writes,
                transactional::read_only_transactions_reject_writes,
                transactional::a_timed_out_transaction_aborts_and_applies_nothing,
                transactional::reported_isolation_is_at_least_the_requested_level,
                transactional::the_transaction_helper_retries_a_conflicting_body,
                transactional::concurrent_increments_with_retries_all_land,
                transactional::transactions_work_through_a_trait_object,
                hermitage::hermitage_g0_write_cycles_are_prevented,
                hermitage::hermitage_g1a_aborted_reads_are_prevented,
                hermitage::hermitage_g1b_intermediate_reads_are_prevented,
                hermitage::hermitage_g1c_circular_information_flow_is_prevented,
                hermitage::hermitage_otv_observed_transaction_vanishes_is_prevented,
                hermitage::hermitage_pmp_predicate_many_preceders_is_prevented,
                hermitage::hermitage_p4_lost_update_is_prevented,
                hermitage::hermitage_g_single_read_skew_is_prevented,
                hermitage::hermitage_g2_item_write_skew_is_prevented,
            ];
            model: [
                transactional::random_savepoint_sequences_match_a_model,
            ];
        }
    };
}

/// The observable suite: `observable_suite!(MyHarness::new());` expands into the module
/// `observable_conformance`: commit order, transactions as one batch, nothing from rollbacks or
/// failed writes, batches and clears, vetoing before-hooks, after-hooks, glob and regex watches,
/// unsubscribing, lag reporting and (where declared) cross-handle delivery. Needs an
/// [`ObservableHarness`](crate::ObservableHarness).
#[macro_export]
macro_rules! observable_suite {
    ($harness:expr) => {
        $crate::observable_suite!(observable_conformance, $harness);
    };
    ($module:ident, $harness:expr) => {
        $crate::__suite! {
            $module, $harness, ObservableHarness;
            plain: [
                observable::capabilities_agree_with_tier_accessors,
                observable::committed_writes_arrive_in_commit_order,
                observable::concurrent_writes_arrive_once_each_in_sequence_order,
                observable::a_transaction_arrives_as_one_batch,
                observable::only_committed_changes_are_announced,
                observable::batches_and_clears_announce_every_change,
                observable::a_vetoing_before_hook_leaves_the_store_unchanged,
                observable::a_before_hook_can_veto_reads,
                observable::after_hooks_see_committed_writes,
                observable::watch_by_glob_delivers_matching_keys_only,
                observable::watch_by_regex_matches_whole_keys,
                observable::dropping_a_subscription_leaves_others_unaffected,
                observable::a_stalled_subscriber_lags_without_blocking_writers,
                observable::changes_cross_handles_when_declared,
            ];
            model: [];
        }
    };
}

/// The persistence suite, for stores that declare `persistent`:
/// `persistence_suite!(MyHarness::new());` expands into the module `persistence_conformance`.
/// The harness must give back a namespace's data when it is opened again after
/// [`Harness::close`](crate::Harness::close).
#[macro_export]
macro_rules! persistence_suite {
    ($harness:expr) => {
        $crate::persistence_suite!(persistence_conformance, $harness);
    };
    ($module:ident, $harness:expr) => {
        $crate::__suite! {
            $module, $harness, StorageHarness;
            plain: [
                persistence::capabilities_declare_persistence,
                persistence::acknowledged_writes_survive_reopening,
                persistence::typed_values_survive_reopening,
                persistence::batches_and_transactions_survive_reopening,
                persistence::a_reopened_store_keeps_working,
            ];
            model: [];
        }
    };
}

/// The crash suite: `crash_suite!(|location: String| async move { MyStore::open(location) });`
/// expands into the module `crash_conformance` with two tests: `crash_child_entry` (what the
/// killed child process runs; on its own it checks the write-and-acknowledge loop in process) and
/// `acknowledged_writes_survive_sigkill` (kills the child `CONFORMANCE_CRASH_TRIALS` times, 200 by
/// default, and checks every acknowledged write after each kill). The closure opens a
/// `Storage<serde_json::Value>` at `location`, a path inside a fresh temporary directory.
#[macro_export]
macro_rules! crash_suite {
    ($open:expr) => {
        $crate::crash_suite!(crash_conformance, $open);
    };
    ($module:ident, $open:expr) => {
        #[allow(unused_imports, clippy::all, clippy::pedantic)]
        mod $module {
            use super::*;

            #[test]
            fn crash_child_entry() {
                $crate::runner::run(
                    concat!(stringify!($module), "::crash_child_entry"),
                    $crate::crash::child_entry($open),
                );
            }

            #[test]
            fn acknowledged_writes_survive_sigkill() {
                $crate::runner::run(
                    concat!(stringify!($module), "::acknowledged_writes_survive_sigkill"),
                    $crate::crash::acknowledged_writes_survive_sigkill(
                        concat!(module_path!(), "::crash_child_entry"),
                        $open,
                    ),
                );
            }
        }
    };
}

/// The distributed suite, for stores on FalkorDB/Redis replication:
/// `distributed_suite!(MyHarness);` expands into the module `distributed_conformance`:
/// node health, replication status, `sync` and consistency levels under a paused and a
/// killed replica, writes following a Sentinel failover, and the loss window of a
/// partitioned primary. Needs a [`DistributedHarness`](crate::distributed::DistributedHarness);
/// each check starts its own servers with [`crate::server`], one cluster at a time (the
/// checks time failovers and lag, which a second cluster's load on a small machine skews).
#[macro_export]
macro_rules! distributed_suite {
    ($harness:expr) => {
        $crate::distributed_suite!(distributed_conformance, $harness);
    };
    ($module:ident, $harness:expr) => {
        #[allow(unused_imports, clippy::all, clippy::pedantic)]
        mod $module {
            use super::*;

            #[test]
            fn replica_loss_is_reported_and_levels_hold() {
                let _one_cluster_at_a_time = $crate::distributed::serial();
                $crate::runner::run(
                    concat!(
                        stringify!($module),
                        "::replica_loss_is_reported_and_levels_hold"
                    ),
                    async {
                        let harness = $harness;
                        $crate::distributed::replica_loss_is_reported_and_levels_hold(&harness)
                            .await
                    },
                );
            }

            #[test]
            fn writes_follow_a_failover() {
                let _one_cluster_at_a_time = $crate::distributed::serial();
                $crate::runner::run(
                    concat!(stringify!($module), "::writes_follow_a_failover"),
                    async {
                        let harness = $harness;
                        $crate::distributed::writes_follow_a_failover(&harness).await
                    },
                );
            }

            #[test]
            fn loss_window_of_a_partitioned_primary() {
                let _one_cluster_at_a_time = $crate::distributed::serial();
                $crate::runner::run(
                    concat!(
                        stringify!($module),
                        "::loss_window_of_a_partitioned_primary"
                    ),
                    async {
                        let harness = $harness;
                        $crate::distributed::loss_window_of_a_partitioned_primary(&harness).await
                    },
                );
            }
        }
    };
}
