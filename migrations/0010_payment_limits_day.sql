-- A usage payment holds its share of its payee's limits while it is
-- PENDING, SENT or SETTLED, counted on the day it took them; ERROR gives
-- them back (NULL), and a re-drive or a late settlement takes them again
-- on its own day.
ALTER TABLE payments ADD COLUMN limits_day date;
UPDATE payments SET limits_day = (created_at AT TIME ZONE 'UTC')::date
 WHERE payee_id IS NOT NULL AND status IN ('PENDING', 'SENT', 'SETTLED');
