"""Built-in policies: ``agent-safe`` (the default) and ``readonly``.

Written as the same dicts a user would write in YAML, and loaded through
the same validation.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CREDENTIAL_TABLES", "DANGEROUS_FUNCTIONS", "PRESETS"]

#: Functions that reach the server's files, programs, network or other
#: sessions, run SQL of their own, or change the session's safety settings.
DANGEROUS_FUNCTIONS = [
    # PostgreSQL: server files, large objects, other servers, other sessions
    "pg_read_file*",
    "pg_read_binary_file*",
    "pg_ls_*",
    "pg_stat_file",
    "pg_file_*",
    "pg_logdir_ls",
    "lo_import",
    "lo_export",
    "dblink*",
    "pg_terminate_backend*",
    "pg_cancel_backend*",
    "pg_reload_conf",
    "pg_rotate_logfile*",
    "pg_promote",
    "pg_switch_wal",
    "pg_sleep*",
    "set_config",
    # PostgreSQL: the functions behind catalogs the presets refuse
    # (pg_settings, pg_file_settings, pg_hba_file_rules, ...)
    "pg_show_all_settings",
    "pg_show_all_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_config",
    "pg_current_logfile*",
    "pg_relation_filepath",
    "pg_relation_filenode",
    # PostgreSQL: functions that run SQL text of their own, or dump whole
    # tables and schemas around table rules
    "query_to_xml*",
    "cursor_to_xml*",
    "table_to_xml*",
    "schema_to_xml*",
    "database_to_xml*",
    "ts_stat",
    "ts_rewrite",
    # PostgreSQL: side effects that outlive the statement or the transaction
    "lo_*",
    "loread",
    "lowrite",
    "pg_logical_*",
    "pg_notify",
    "pg_advisory_*",
    "pg_try_advisory_*",
    "pg_create_*_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_*_replication_slot",
    "pg_replication_*",
    "pg_stat_reset*",
    "pg_stat_statements_reset",
    "pg_stat_clear_snapshot",
    "pg_backup_*",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_create_restore_point",
    "pg_wal_replay_*",
    "pg_import_system_collations",
    "pg_log_backend_memory_contexts",
    "txid_current",
    "pg_current_xact_id",
    # MySQL / MariaDB
    "load_file",
    "sleep",
    "benchmark",
    "sys_exec",
    "sys_eval",
    "get_lock",
    "release_lock",
    "release_all_locks",
    "is_used_lock",
    "is_free_lock",
    "master_pos_wait",
    "source_pos_wait",
    "master_gtid_wait",
    # SQLite
    "load_extension",
    "readfile",
    "writefile",
    "edit",
    "fts3_tokenizer",
]

#: Catalogs that hold credentials, privileges of other users or server
#: files' settings: readable by a superuser DSN, never by an agent.
CREDENTIAL_TABLES = [
    "pg_authid",
    "pg_shadow",
    "pg_user_mapping",
    "pg_user_mappings",
    "pg_largeobject",
    "pg_largeobject_metadata",
    "pg_settings",
    "pg_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_stat_statements",
    "mysql.user",
    "mysql.global_priv",
    "mysql.db",
    "mysql.tables_priv",
    "mysql.columns_priv",
    "mysql.procs_priv",
    "mysql.proxies_priv",
    "mysql.roles_mapping",
    "mysql.servers",
    "mysql.plugin",
    "information_schema.user_privileges",
]

_SAFETY_RULES: list[dict[str, Any]] = [
    {
        "id": "no-credential-catalogs",
        "match": {"tables": CREDENTIAL_TABLES},
        "action": "block",
        "message": "catalogs of passwords, privileges and server settings are not allowed",
    },
    {
        "id": "no-stacked-statements",
        "match": {"multiple_statements": True},
        "action": "block",
        "message": "send one statement per query (stacked statements are how injections chain)",
    },
    {
        "id": "no-dangerous-functions",
        "match": {"functions": DANGEROUS_FUNCTIONS},
        "action": "block",
        "message": "functions that reach server files, programs, other servers or "
        "session settings are not allowed",
    },
]

AGENT_SAFE: dict[str, Any] = {
    "version": 1,
    "default": "allow",
    "on_unparsed": "block",
    # Secure by default: sensitive values found in any returned text are masked.
    "masking": {"detectors": "all"},
    "rules": [
        {
            "id": "no-ddl",
            "match": {"statements": ["ddl"]},
            "action": "block",
            "message": "schema changes (CREATE, ALTER, DROP, TRUNCATE) are not allowed",
        },
        {
            "id": "no-dcl",
            "match": {"statements": ["dcl"]},
            "action": "block",
            "message": "privilege and role changes (GRANT, REVOKE, SET ROLE, "
            "SET SESSION AUTHORIZATION) are not allowed",
        },
        {
            "id": "no-admin",
            "match": {"statements": ["admin"]},
            "action": "block",
            "message": "server administration (server-side COPY, PRAGMA, ATTACH, VACUUM, "
            "transaction and session safety settings) is not allowed",
        },
        {
            "id": "write-needs-where",
            "match": {"statements": ["update", "delete"], "where": False},
            "action": "block",
            "message": "UPDATE and DELETE need a WHERE clause that is not always true",
        },
        *_SAFETY_RULES,
    ],
}

READONLY: dict[str, Any] = {
    "version": 1,
    "default": "allow",
    "on_unparsed": "block",
    "masking": {"detectors": "all"},
    "rules": [
        {
            "id": "read-only",
            "match": {"statements": ["write", "ddl", "dcl", "admin"]},
            "action": "block",
            "message": "only reads are allowed",
        },
        *_SAFETY_RULES,
    ],
}

PRESETS: dict[str, dict[str, Any]] = {"agent-safe": AGENT_SAFE, "readonly": READONLY}
