* two-input NOR
.subckt nor2 A B Y VDD VSS
M1 N A VDD VDD pmos W=4u L=0.13u
M2 Y B N VDD pmos W=4u L=0.13u
M3 Y A VSS VSS nmos W=1u L=0.13u
M4 Y B VSS VSS nmos W=1u L=0.13u
.ends
