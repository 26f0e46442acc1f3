INSERT INTO stock (product_id, available) VALUES
  (1, 100), (2, 80), (3, 25), (4, 40), (5, 10), (6, 3)
ON CONFLICT (product_id) DO UPDATE SET available = EXCLUDED.available;
