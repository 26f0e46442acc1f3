INSERT INTO products (id, sku, name, price_cents, category) VALUES
  (1, 'TEA-GRN', 'Green tea', 450, 'tea'),
  (2, 'TEA-BLK', 'Black tea', 390, 'tea'),
  (3, 'COF-ESP', 'Espresso beans', 1290, 'coffee'),
  (4, 'COF-FLT', 'Filter coffee', 990, 'coffee'),
  (5, 'MUG-WHT', 'White mug', 800, 'gear'),
  (6, 'KET-STL', 'Steel kettle', 3900, 'gear');
SELECT setval('products_id_seq', 6);
