-- q03: k nearest neighbours. The 10 features nearest to Copacabana, Rio de
-- Janeiro, in the GiST index's distance order (<->); id breaks the ties
-- between features at the same distance (such as several containing the
-- point). The distance shown is geodesic, rounded to the centimetre.
-- The inner query alone orders by distance, so that PostgreSQL 15 walks the
-- GiST index (an ORDER BY distance, id cannot: the planner uses an index's
-- ordering operator only for the whole sort key, and sorted every row
-- instead, 1.2 s at 1,000,000 features). WITH TIES keeps every feature as
-- near as the 10th, so ordering them by id returns exactly the rows and order
-- of ORDER BY distance, id LIMIT 10.
SELECT k.id,
       k.nome,
       k.categoria,
       round(ST_Distance(k.geom::geography,
                         ST_SetSRID(ST_MakePoint(-43.1822, -22.9711), 4326)::geography)::numeric,
             2) AS distancia_m
FROM (SELECT g.id, g.nome, g.categoria, g.geom,
             g.geom <-> ST_SetSRID(ST_MakePoint(-43.1822, -22.9711), 4326) AS distancia
      FROM public.geometrias AS g
      ORDER BY g.geom <-> ST_SetSRID(ST_MakePoint(-43.1822, -22.9711), 4326)
      FETCH FIRST 10 ROWS WITH TIES) AS k
ORDER BY k.distancia, k.id
LIMIT 10
