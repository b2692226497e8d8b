"""Beyond one host: many replicas (each one router + its shard group) behind Ray Serve, and the
multi-replica simulation command. The routing policy itself is pure and lives in
chameleon.core.affinity; Ray is imported only by chameleon.scale.ray_serve, when it is used."""
