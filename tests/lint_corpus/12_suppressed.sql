-- Both linters are told the statement is intended (each in its own way).
-- dbkit: ignore drop-table
-- squawk-ignore ban-drop-table
DROP TABLE old_audit_log;
