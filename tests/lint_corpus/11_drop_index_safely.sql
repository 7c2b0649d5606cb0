-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS invoices_total_idx;
