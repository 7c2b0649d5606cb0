-- transactional: false
-- Each statement commits on its own, so VALIDATE takes only SHARE UPDATE EXCLUSIVE, and
-- SET NOT NULL then skips its scan because the validated CHECK proves it.
ALTER TABLE accounts ADD CONSTRAINT accounts_plan_not_null CHECK (plan IS NOT NULL) NOT VALID;
ALTER TABLE accounts VALIDATE CONSTRAINT accounts_plan_not_null;
ALTER TABLE accounts ALTER COLUMN plan SET NOT NULL;
ALTER TABLE accounts DROP CONSTRAINT accounts_plan_not_null;
